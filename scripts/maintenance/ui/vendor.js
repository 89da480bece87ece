// The chat page's libraries, exposed as window.LocalrunVendor: a Markdown parser, an HTML
// sanitizer and a syntax highlighter (the common languages). Bundled by scripts/build_ui.py.
import { Marked } from "marked";
import DOMPurify from "dompurify";
import hljs from "highlight.js/lib/common";

window.LocalrunVendor = { Marked, DOMPurify, hljs };
