"""The web app runs on what the help page supports: "iOS 12.5.1 and above" (Safari 12), with
current Chrome, Firefox and Safari. app.js has no build step, so its source must be in a
language Safari 12 parses: it is parsed here as ES2017 plus object spread (esprima), a subset
of Safari 12's. DOM methods newer than Safari 12 are polyfilled at the top of app.js or not
used. outdated.js, for browsers that cannot run the app at all, must be ES3-simple."""
from __future__ import annotations

import re
from pathlib import Path

import esprima
import pytest

STATIC = Path(__file__).resolve().parents[2] / "gateway" / "src" / "msp_gateway" / "static"
APP = (STATIC / "app.js").read_text()

# Newer than Safari 12 (iOS 12.5.1): name -> why not. replaceChildren is polyfilled in app.js.
TOO_NEW = {
    r"\.replaceAll\(": "String.replaceAll: Safari 13.1",
    r"\.matchAll\(": "String.matchAll: Safari 13",
    r"\.at\(": "Array/String.at: Safari 15.4",
    r"Promise\.allSettled": "Safari 13",
    r"structuredClone": "Safari 15.4",
    r"crypto\.randomUUID": "Safari 15.4",
    r"\.showModal\(": "<dialog>: Safari 15.4",
    r"Object\.hasOwn\(": "Safari 15.4",
    r"\.findLast(Index)?\(": "Safari 15.4",
    r"\(\?<[=!]": "regex lookbehind: Safari 16.4",
}


def test_app_js_parses_as_a_language_safari_12_knows() -> None:
    esprima.parseScript(APP)  # raises on ?. ?? class fields, numeric separators, catch without binding...


@pytest.mark.parametrize("snippet", ["a?.b", "a ?? b", "class A { x = 1 }", "1_000"])
def test_the_check_refuses_what_safari_12_cannot_parse(snippet: str) -> None:
    with pytest.raises(esprima.Error):
        esprima.parseScript(snippet)


def test_no_dom_or_library_call_newer_than_safari_12_without_a_polyfill() -> None:
    found = {why for pattern, why in TOO_NEW.items() if re.search(pattern, APP)}
    assert not found, f"app.js uses what iOS 12.5.1 lacks: {sorted(found)}"
    assert "if (!Element.prototype.replaceChildren)" in APP  # used throughout: polyfilled


def test_the_out_of_date_browser_prompt_is_es3_simple() -> None:
    tokens = esprima.tokenize((STATIC / "outdated.js").read_text())
    newer = [t.value for t in tokens if t.type == "Template" or t.value in ("=>", "...", "const", "let", "class")]
    assert not newer, newer
