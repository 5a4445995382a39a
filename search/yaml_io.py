"""Job and config files read as YAML: ``yaml.safe_load`` only, any problem one ConfigError line
naming the file (and the line, for malformed YAML).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from attntune.model.config import ConfigError, file_not_found


def read_yaml(path: str | Path) -> Any:
    """``yaml.safe_load`` a file; any problem becomes one ConfigError line naming file and line."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: {file_not_found(p)}")
    if p.is_dir():
        raise ConfigError(f"{p}: is a folder, expected a YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start})") from None
    return parse_yaml_text(text, str(p)), text


def parse_yaml_text(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if "python/" in str(e) or "could not determine a constructor" in str(e):
            problem = f"unsafe or unknown YAML tag ({problem}); attntune loads YAML with safe_load only"
        raise ConfigError(f"{source}:{where} malformed YAML: {problem}") from None

