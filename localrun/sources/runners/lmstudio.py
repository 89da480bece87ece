"""LM Studio's models, found where LM Studio finds them, with the settings it keeps for each.

LM Studio's home is what `~/.lmstudio-home-pointer` names (a path, the whole file), else
`~/.cache/lm-studio` where an older install left one, else `~/.lmstudio` (lmstudio-js
`findLMStudioHome`). Its models are in the folder `<home>/settings.json` names as
`downloadsFolder`, else `<home>/models` (lms `resolveModelsFolderPath`), laid out
`ORG/REPO/FILE.gguf`, two levels exactly; a file there may be a link `lms import -l` made to a
file anywhere. Each model is named as `pull` names it (`hf.co/ORG/REPO:QUANT`,
sources.runners.folders).

What "My Models -> gear" saved for a model is in
`<home>/.internal/user-concrete-model-default-config/ORG/REPO/FILE.gguf.json` (a split model's
by its first part). The comment above `_PLAIN` says how its fields become PARAMETER, SYSTEM and
TEMPLATE lines; `with_settings` says what is left out.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from localrun.errors import ImportSourceError
from localrun.recipes.modelfile import Modelfile
from localrun.sources.runners.folders import gguf_models
from localrun.sources.runners.found import (
    MAX_JSON,
    Found,
    dirs,
    parameter,
    read_json,
    read_text,
    refused,
)

POINTER = ".lmstudio-home-pointer"
SETTINGS = Path(".internal") / "user-concrete-model-default-config"

# A settings file is `{"operation": {"fields": [{"key", "value"}]}, "load": {"fields": [...]}}`,
# read as LM Studio's lenient parser reads it: the first of a repeated key counts, and an unknown
# key or a value of the wrong shape is dropped. Its fields are carried over as:
#
#   llm.prediction.temperature          PARAMETER temperature
#   llm.prediction.topKSampling         PARAMETER top_k (a plain number; LM Studio's -1, no
#                                       limit, is localrun's 0)
#   llm.prediction.topPSampling         PARAMETER top_p            these five are
#   llm.prediction.minPSampling         PARAMETER min_p            {"checked", "value"}:
#   llm.prediction.repeatPenalty        PARAMETER repeat_penalty   carried only when checked
#   llm.prediction.seed                 PARAMETER seed
#   llm.prediction.maxPredictedTokens   PARAMETER num_predict
#   llm.prediction.stopStrings          PARAMETER stop, each
#   llm.load.contextLength              PARAMETER num_ctx
#   llm.prediction.systemPrompt         SYSTEM, when not empty
#   llm.load.promptTemplate, else       TEMPLATE, when its type is jinja
#     llm.prediction.promptTemplate
_PLAIN = {
    "llm.prediction.temperature": "temperature",
    "llm.prediction.topKSampling": "top_k",
    "llm.load.contextLength": "num_ctx",
}
_CHECKED = {
    "llm.prediction.topPSampling": "top_p",
    "llm.prediction.minPSampling": "min_p",
    "llm.prediction.repeatPenalty": "repeat_penalty",
    "llm.prediction.seed": "seed",
    "llm.prediction.maxPredictedTokens": "num_predict",
}
_TEMPLATES = ("llm.load.promptTemplate", "llm.prediction.promptTemplate")  # load's overrides


def home() -> Path:
    """LM Studio's home, found as LM Studio finds it (the pointer, the older cache, ~/.lmstudio)."""
    user = Path.home()
    pointer = user / POINTER
    if pointer.is_file():
        try:
            named = read_text(pointer, 4096).strip()
        except ImportSourceError:
            named = ""
        if named:
            return Path(named).expanduser()
    older = user / ".cache" / "lm-studio"
    return older if older.is_dir() else user / ".lmstudio"


def models_folder(lm_home: Path) -> Path:
    """The folder LM Studio downloads into: settings.json's downloadsFolder, else models/."""
    settings = lm_home / "settings.json"
    data: Any = None
    if settings.is_file():
        try:
            data = read_json(settings, MAX_JSON, "LM Studio settings file")
        except ImportSourceError:  # LM Studio falls back the same way
            data = None
    folder = data.get("downloadsFolder") if isinstance(data, dict) else None
    if isinstance(folder, str) and folder.strip():
        path = Path(folder.strip()).expanduser()
        if path.is_absolute():
            return path
    return lm_home / "models"


# Folders that hold a machine's own files, never a runner's models: a downloadsFolder that is
# one of them (or the root, or a folder above the home) would make every GGUF two levels down
# importable, and listed to the server's clients.
_SYSTEM = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/run", "/sbin", "/sys",
           "/usr", "/var")  # fmt: skip


def _system_folders() -> list[Path]:
    """The system's own folders (Windows': its folder and the program folders)."""
    folders = [Path(s) for s in _SYSTEM]
    if sys.platform == "win32":
        for variable in ("SystemRoot", "ProgramFiles", "ProgramFiles(x86)", "ProgramData"):
            value = os.environ.get(variable)
            if value:
                folders.append(Path(value))
    return folders


def unfit_folder(root: Path) -> str | None:
    """Why `root` cannot be LM Studio's models folder (None: it can)."""
    try:
        real = root.resolve()
    except (OSError, RuntimeError):
        return None  # not there: nothing is listed from it anyway
    if real == Path(real.anchor) or any(real == s for s in _system_folders()):
        return f"its downloadsFolder is {root}, a folder of the system's own files"
    if Path.home().resolve().is_relative_to(real):
        return f"its downloadsFolder is {root}, which holds the whole home folder"
    return None


def models(lm_home: Path | None = None) -> list[Found]:
    """Return the GGUF models in LM Studio's models folder (ORG/REPO/*.gguf), with their settings.

    A folder of the system's (`/`, `/usr` ...) or one above the home is refused, in one row that
    says why. An unreadable ORG folder is one row, and the others are still listed.
    """
    lm_home = lm_home if lm_home is not None else home()
    root = models_folder(lm_home)
    if not root.is_dir():
        return []
    unfit = unfit_folder(root)
    if unfit is not None:
        return [refused("lmstudio", root, "lmstudio", f"LM Studio's models are not read: {unfit}")]
    found: list[Found] = []
    for org in dirs(root):
        try:
            repos = dirs(org)
        except OSError as exc:
            found.append(refused(f"hf.co/{org.name}".lower(), org, "lmstudio",
                                 f"{org}: {exc.strerror}"))  # fmt: skip
            continue
        for repo in repos:
            try:
                files = sorted(p for p in repo.iterdir() if p.name.lower().endswith(".gguf"))
            except OSError as exc:
                found.append(refused(f"hf.co/{org.name}/{repo.name}".lower(), repo, "lmstudio",
                                     f"{repo}: {exc.strerror}"))  # fmt: skip
                continue
            configs = lm_home / SETTINGS / org.name / repo.name
            for model in gguf_models(files, org.name, repo.name, "lmstudio", within=None):
                found.append(with_settings(model, configs / f"{model.location.name}.json"))
    return found


def with_settings(found: Found, path: Path) -> Found:
    """Return `found` with what LM Studio saved for it in `path` carried into its Modelfile.

    Each value must pass localrun's own rules for its PARAMETER (recipes.params), or it is left
    out. A settings file larger than MAX_JSON or not JSON at all makes its model one that is
    listed with that reason and not imported. Taking the model without the settings its user
    saved would answer differently from LM Studio without saying so. A preset the file names
    is not followed.
    """
    if found.modelfile is None or not os.path.lexists(path):
        return found
    try:
        saved = read_json(path, MAX_JSON, "LM Studio settings file")
    except ImportSourceError as exc:
        return refused(found.name, found.location, found.source, str(exc))
    apply(found.modelfile, fields(saved))
    return found


def fields(saved: Any) -> dict[str, Any]:
    """The key-value fields of a settings file's `operation` and `load`, each key's first."""
    out: dict[str, Any] = {}
    for scope in ("operation", "load"):
        part = saved.get(scope) if isinstance(saved, dict) else None
        listed = part.get("fields") if isinstance(part, dict) else None
        for item in listed if isinstance(listed, list) else []:
            if isinstance(item, dict) and isinstance(item.get("key"), str):
                out.setdefault(item["key"], item.get("value"))
    return out


def apply(modelfile: Modelfile, values: dict[str, Any]) -> None:
    """Carry LM Studio's settings `values`, by key, into `modelfile` (the table above _PLAIN)."""
    wanted: list[tuple[str, Any]] = []
    for key, name in _PLAIN.items():
        value = values.get(key)
        if name == "top_k" and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = max(value, 0)
        wanted.append((name, value))
    for key, name in _CHECKED.items():
        box = values.get(key)
        if isinstance(box, dict) and box.get("checked") is True:
            wanted.append((name, box.get("value")))
    stops = values.get("llm.prediction.stopStrings")
    wanted += [("stop", s) for s in stops] if isinstance(stops, list) else []
    for name, value in wanted:
        checked = parameter(name, value) if value is not None else None
        if checked is not None:
            modelfile.parameters.append(checked)
    system = values.get("llm.prediction.systemPrompt")
    if isinstance(system, str) and system.strip():
        modelfile.system = system
    for key in _TEMPLATES:
        template = _jinja(values.get(key))
        if template:
            modelfile.template = template
            break


def _jinja(value: Any) -> str | None:
    """Return the Jinja text of a promptTemplate value of type jinja, or None.

    The value is {"type", "jinjaPromptTemplate": {"template"}}. A manual one (before/after
    strings per role) is not carried.
    """
    if not isinstance(value, dict) or value.get("type") != "jinja":
        return None
    inner = value.get("jinjaPromptTemplate")
    template = inner.get("template") if isinstance(inner, dict) else None
    return template if isinstance(template, str) and template.strip() else None
