// The chat page of `localrun serve`: talks to the server's own /api routes, keeps the
// conversations in this browser's localStorage (nothing leaves the machine), renders answers
// as sanitized Markdown. No inline script or style: the page runs under a strict CSP.
"use strict";

(() => {
  const { Marked, DOMPurify, hljs } = window.LocalrunVendor;
  const STORE = "localrun.conversations";
  const KEY = "localrun.apiKey"; // sessionStorage: this tab only
  const $ = (id) => document.getElementById(id);

  // Raw HTML in an answer is shown as text, never rendered (DOMPurify then cleans what
  // Markdown itself made, as a second guard).
  const escapeHtml = (text) =>
    text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  // A single newline is a line break, as chat UIs show answers (a haiku keeps its lines).
  const markdown = new Marked({
    gfm: true,
    breaks: true,
    renderer: { html: (token) => escapeHtml(token.text) },
  });

  let conversations = load();
  let current = null; // the open conversation
  let controller = null; // the answer being streamed, to stop it
  let pending = []; // images for the next message: data URLs
  const IMAGE_TYPES = ["image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp"];

  // -- storage ---------------------------------------------------------------------------------

  function load() {
    try {
      const list = JSON.parse(localStorage.getItem(STORE) || "[]");
      return Array.isArray(list) ? list : [];
    } catch {
      return [];
    }
  }

  function save() {
    try {
      localStorage.setItem(STORE, JSON.stringify(conversations));
    } catch {
      // Over the browser's storage quota (images are large): keep the text, drop old images.
      const light = conversations.map((c) => ({
        ...c,
        messages: c.messages.map(({ images, ...m }) => (images ? { ...m, images_dropped: images.length } : m)),
      }));
      try {
        localStorage.setItem(STORE, JSON.stringify(light));
      } catch {
        status("This browser's storage is full: delete old conversations.");
      }
    }
  }

  function fresh() {
    const conversation = {
      id: String(Date.now()) + Math.random().toString(16).slice(2, 8),
      title: "New chat",
      model: $("model").value || "",
      system: "",
      options: {},
      messages: [],
      created: new Date().toISOString(),
    };
    conversations.unshift(conversation);
    save();
    return conversation;
  }

  // -- the server ------------------------------------------------------------------------------

  function headers() {
    const out = { "Content-Type": "application/json" };
    const key = sessionStorage.getItem(KEY);
    if (key) out.Authorization = "Bearer " + key;
    return out;
  }

  async function call(path, init) {
    let response = await fetch(path, { ...init, headers: headers() });
    if (response.status === 401) {
      await askKey();
      response = await fetch(path, { ...init, headers: headers() });
    }
    return response;
  }

  function askKey() {
    return new Promise((resolve) => {
      const dialog = $("key-dialog");
      $("key").value = "";
      dialog.addEventListener(
        "close",
        () => {
          const key = $("key").value.trim();
          if (key) sessionStorage.setItem(KEY, key);
          resolve();
        },
        { once: true },
      );
      dialog.showModal();
    });
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      const error = body.error;
      if (typeof error === "string") return error;
      if (error && error.message) return error.message + (error.hint ? ` (${error.hint})` : "");
    } catch {
      /* not JSON */
    }
    return `HTTP ${response.status}`;
  }

  async function loadModels() {
    const select = $("model");
    try {
      const response = await call("/api/tags", { method: "GET" });
      if (!response.ok) throw new Error(await errorText(response));
      const { models } = await response.json();
      select.replaceChildren(
        ...models.map((m) => {
          const option = document.createElement("option");
          option.value = m.name;
          option.textContent = m.remote_host ? `${m.name} (remote: ${m.remote_host})` : m.name;
          return option;
        }),
      );
      status(models.length ? "" : "No models yet: `localrun pull` or `localrun create` one.");
    } catch (error) {
      status(`Could not list the models: ${error.message}`);
    }
  }

  // -- rendering -------------------------------------------------------------------------------

  function status(text) {
    $("status").textContent = text;
  }

  function renderMarkdown(element, text) {
    element.innerHTML = DOMPurify.sanitize(markdown.parse(text));
    for (const block of element.querySelectorAll("pre code")) {
      hljs.highlightElement(block);
      const button = document.createElement("button");
      button.type = "button";
      button.className = "copy";
      button.textContent = "Copy";
      button.addEventListener("click", async () => {
        await navigator.clipboard.writeText(block.textContent);
        button.textContent = "Copied";
        setTimeout(() => (button.textContent = "Copy"), 1500);
      });
      block.parentElement.append(button);
    }
  }

  // An answer that is JSON (a `format` answer) or a tool call is shown as highlighted JSON.
  function answerMarkdown(message) {
    let text = message.content || "";
    const trimmed = text.trim();
    if (/^[{[]/.test(trimmed)) {
      try {
        text = "```json\n" + JSON.stringify(JSON.parse(trimmed), null, 2) + "\n```";
      } catch {
        /* not JSON after all */
      }
    }
    if (message.tool_calls && message.tool_calls.length) {
      const calls = message.tool_calls.map((c) => c.function || c);
      text += "\n\n**Tool calls**\n\n```json\n" + JSON.stringify(calls, null, 2) + "\n```";
    }
    return text;
  }

  function messageElement(message) {
    const element = document.createElement("div");
    element.className = `message ${message.role}`;
    fill(element, message);
    return element;
  }

  function fill(element, message) {
    element.replaceChildren();
    if (message.role === "user") {
      if (message.images && message.images.length) {
        const strip = document.createElement("div");
        strip.className = "images";
        for (const url of message.images) {
          const image = document.createElement("img");
          image.src = url;
          image.alt = "an attached image";
          strip.append(image);
        }
        element.append(strip);
      }
      element.append(document.createTextNode(message.content));
      return;
    }
    if (message.role === "error") {
      element.textContent = message.content;
      return;
    }
    if (message.thinking) {
      const details = document.createElement("details");
      details.className = "thinking";
      const summary = document.createElement("summary");
      summary.textContent = "Thinking";
      const text = document.createElement("div");
      text.className = "thinking-text";
      text.textContent = message.thinking;
      details.append(summary, text);
      element.append(details);
    }
    const body = document.createElement("div");
    body.className = "body";
    renderMarkdown(body, answerMarkdown(message));
    element.append(body);
    if (message.timings) {
      const timings = document.createElement("div");
      timings.className = "timings";
      const t = message.timings;
      const parts = [];
      if (t.ttft_ms != null) parts.push(`first token ${Math.round(t.ttft_ms)} ms`);
      if (t.tokens_per_s) parts.push(`${t.tokens_per_s.toFixed(1)} tokens/s`);
      if (t.eval_count) parts.push(`${t.eval_count} tokens`);
      if (t.stopped) parts.push("stopped");
      timings.textContent = parts.join(" · ");
      element.append(timings);
    }
  }

  function renderConversation() {
    const box = $("messages");
    box.replaceChildren(...(current ? current.messages.map(messageElement) : []));
    box.scrollTop = box.scrollHeight;
    $("system").value = current ? current.system : "";
    for (const name of ["temperature", "num_ctx", "seed"]) {
      const value = current && current.options[name];
      $(name).value = value == null ? "" : value;
    }
    if (current && current.model) $("model").value = current.model;
    renderList();
  }

  function showSidebar(open) {
    // On a narrow screen the sidebar slides over the page, a backdrop behind it.
    $("sidebar").classList.toggle("open", open);
    $("backdrop").hidden = !open;
    $("toggle-sidebar").setAttribute("aria-expanded", String(open));
    if (open) $("close-sidebar").focus();
  }

  function renderList() {
    const list = $("conversations");
    list.replaceChildren(
      ...conversations.map((c) => {
        const item = document.createElement("li");
        if (current && c.id === current.id) item.className = "current";
        const open = button(c.title, "open", () => {
          current = c;
          renderConversation();
          showSidebar(false);
        });
        open.title = c.title;
        const rename = button("✎", "rename", () => {
          const title = prompt("Rename the conversation", c.title);
          if (title && title.trim()) {
            c.title = title.trim().slice(0, 200);
            save();
            renderList();
          }
        });
        rename.setAttribute("aria-label", `Rename ${c.title}`);
        const remove = button("✕", "delete", () => {
          if (!confirm(`Delete "${c.title}"?`)) return;
          conversations = conversations.filter((x) => x.id !== c.id);
          if (current && current.id === c.id) current = conversations[0] || null;
          save();
          renderConversation();
        });
        remove.setAttribute("aria-label", `Delete ${c.title}`);
        item.append(open, rename, remove);
        return item;
      }),
    );
  }

  function button(text, className, onClick) {
    const element = document.createElement("button");
    element.type = "button";
    element.className = className;
    element.textContent = text;
    element.addEventListener("click", onClick);
    return element;
  }

  // -- a turn ----------------------------------------------------------------------------------

  function options() {
    const out = {};
    const temperature = $("temperature").value;
    if (temperature !== "") out.temperature = Number(temperature);
    const numCtx = $("num_ctx").value;
    if (numCtx !== "") out.num_ctx = Number(numCtx);
    const seed = $("seed").value;
    if (seed !== "") out.seed = Number(seed);
    return out;
  }

  async function send(text) {
    if (controller || (!text.trim() && !pending.length)) return;
    if (!current) current = fresh();
    current.model = $("model").value;
    current.system = $("system").value;
    current.options = options();
    if (!current.messages.length) current.title = (text.trim().split("\n")[0] || "An image").slice(0, 60);
    const user = { role: "user", content: text };
    if (pending.length) user.images = pending;
    pending = [];
    renderAttachments();
    current.messages.push(user);
    const answer = { role: "assistant", content: "", thinking: "" };
    current.messages.push(answer);
    save();
    renderConversation();
    const element = $("messages").lastElementChild;

    const history = current.messages
      .slice(0, -1)
      .filter((m) => m.role === "user" || m.role === "assistant")
      .map((m) => {
        const out = { role: m.role, content: m.content };
        // Ollama's images: base64 without the data URL's head.
        if (m.images && m.images.length) out.images = m.images.map((url) => url.slice(url.indexOf(",") + 1));
        return out;
      });
    if (current.system.trim()) history.unshift({ role: "system", content: current.system });
    const body = { model: current.model, messages: history, stream: true, options: current.options };

    controller = new AbortController();
    busy(true);
    const started = performance.now();
    let first = null;
    let last = null;
    try {
      const response = await call("/api/chat", {
        method: "POST",
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      if (!response.ok) throw new Error(await errorText(response));
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffered = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        const lines = buffered.split("\n");
        buffered = lines.pop();
        for (const line of lines) {
          if (!line.trim()) continue;
          const chunk = JSON.parse(line);
          if (chunk.error) throw new Error(chunk.error);
          const m = chunk.message || {};
          if ((m.content || m.thinking) && first === null) first = performance.now();
          answer.content += m.content || "";
          answer.thinking += m.thinking || "";
          if (m.tool_calls) answer.tool_calls = m.tool_calls;
          if (chunk.done) last = chunk;
        }
        fill(element, answer);
        $("messages").scrollTop = $("messages").scrollHeight;
      }
      answer.timings = timings(started, first, last, false);
    } catch (error) {
      if (error.name === "AbortError") {
        answer.timings = timings(started, first, null, true);
      } else {
        current.messages.push({ role: "error", content: `Error: ${error.message}` });
      }
    } finally {
      controller = null;
      busy(false);
      save();
      renderConversation();
    }
  }

  function timings(started, first, done, stopped) {
    const out = { stopped };
    if (first !== null) out.ttft_ms = first - started;
    if (done && done.eval_count) {
      out.eval_count = done.eval_count;
      if (done.eval_duration) out.tokens_per_s = done.eval_count / (done.eval_duration / 1e9);
    }
    return out;
  }

  function busy(on) {
    $("send").hidden = on;
    $("stop").hidden = !on;
    status(on ? "Answering…" : "");
  }

  function stop() {
    if (controller) controller.abort(); // the server cancels the generation when we hang up
  }

  // -- export ----------------------------------------------------------------------------------

  function download(name, type, text) {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([text], { type }));
    link.download = name;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }

  function exportMarkdown(c) {
    const lines = [`# ${c.title}`, "", `Model: ${c.model}`, ""];
    if (c.system) lines.push("**System:** " + c.system, "");
    for (const m of c.messages) {
      const who = m.role === "user" ? "You" : m.role === "assistant" ? c.model : "Error";
      lines.push(`**${who}:**`, "", answerMarkdown(m), "");
    }
    return lines.join("\n");
  }

  // -- images ----------------------------------------------------------------------------------

  function renderAttachments() {
    const box = $("attachments");
    box.replaceChildren(
      ...pending.map((url, index) => {
        const figure = document.createElement("figure");
        const image = document.createElement("img");
        image.src = url;
        image.alt = `image ${index + 1} to send`;
        const remove = button("✕", "remove", () => {
          pending.splice(index, 1);
          renderAttachments();
        });
        remove.setAttribute("aria-label", `Remove image ${index + 1}`);
        figure.append(image, remove);
        return figure;
      }),
    );
  }

  function dataUrl(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.addEventListener("load", () => resolve(reader.result));
      reader.addEventListener("error", () => reject(reader.error));
      reader.readAsDataURL(file);
    });
  }

  async function attach(files) {
    const images = [...files].filter((file) => IMAGE_TYPES.includes(file.type));
    if (images.length < files.length) status("Only images (PNG, JPEG, WebP, GIF or BMP) can be attached.");
    // In the order they were picked, however fast each is read.
    pending.push(...(await Promise.all(images.map(dataUrl))));
    renderAttachments();
  }

  // -- wiring ----------------------------------------------------------------------------------

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("input").value;
    $("input").value = "";
    send(text);
  });
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    // An open sidebar (a narrow screen) closes first; otherwise Escape stops the answer.
    if ($("sidebar").classList.contains("open")) showSidebar(false);
    else stop();
  });
  $("stop").addEventListener("click", stop);
  $("attach").addEventListener("click", () => $("attach-file").click());
  $("attach-file").addEventListener("change", (event) => {
    attach(event.target.files);
    event.target.value = "";
  });
  $("input").addEventListener("paste", (event) => {
    const files = [...(event.clipboardData ? event.clipboardData.files : [])];
    if (files.length) {
      event.preventDefault();
      attach(files);
    }
  });
  const main = document.querySelector("main");
  main.addEventListener("dragover", (event) => {
    event.preventDefault();
    main.classList.add("dropping");
  });
  main.addEventListener("dragleave", () => main.classList.remove("dropping"));
  main.addEventListener("drop", (event) => {
    event.preventDefault();
    main.classList.remove("dropping");
    attach([...event.dataTransfer.files]);
  });
  $("new-chat").addEventListener("click", () => {
    current = fresh();
    renderConversation();
    showSidebar(false);
    $("input").focus();
  });
  $("toggle-settings").addEventListener("click", () => {
    const settings = $("settings");
    settings.hidden = !settings.hidden;
    $("toggle-settings").setAttribute("aria-expanded", String(!settings.hidden));
  });
  $("toggle-sidebar").addEventListener("click", () =>
    showSidebar(!$("sidebar").classList.contains("open")),
  );
  $("close-sidebar").addEventListener("click", () => showSidebar(false));
  $("backdrop").addEventListener("click", () => showSidebar(false));
  $("export-json").addEventListener("click", () => {
    if (current) download(`${current.title}.json`, "application/json", JSON.stringify(current, null, 2));
  });
  $("export-md").addEventListener("click", () => {
    if (current) download(`${current.title}.md`, "text/markdown", exportMarkdown(current));
  });

  loadModels().then(() => {
    current = conversations[0] || null;
    renderConversation();
    $("input").focus();
  });
})();
