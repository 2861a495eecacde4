"""Every link a service puts in an email opens a page the web app really has.

The web app (gateway static/app.js) routes on the URL's hash: `route()` looks the part
before "?" up in its PUBLIC and PRIVATE tables, and an unknown route silently falls back to
the Inbox; a view reads its query with `params.get("name")`. A mail linking to
"#/messages/<id>" therefore never opened the message (the route is "#/message?id=<id>").

So: every link template in the services' sources (any string naming "#/", and every
argument of the services' `link(fragment)` helpers, which prefix "/#/") is read here with
the Python parser, and its route must be a key of PUBLIC or PRIVATE, and each of its query
parameters one that route's view reads. app.js is read with esprima (as in
test_web_app_compat.py), not with regular expressions."""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import esprima
import pytest

ROOT = Path(__file__).resolve().parents[2]
APP_JS = ROOT / "gateway" / "src" / "msp_gateway" / "static" / "app.js"
# Every service that sends mail (or may): their sources, and the shared library's.
SOURCES = [ROOT / d / "src" for d in ("auth-service", "mail-service", "billing-service", "verify-service", "shared")]
HOLE = "{}"  # where an f-string puts a value (a token, an id)


# ---- the web app's routes ---------------------------------------------------------------------

def _walk(node: object):  # noqa: ANN202 - esprima nodes
    """Every esprima node under `node`, itself included."""
    if isinstance(node, list):
        for item in node:
            yield from _walk(item)
        return
    if not hasattr(node, "type"):
        return
    yield node
    for key, value in vars(node).items():
        if key not in ("type", "range", "loc") and (isinstance(value, list) or hasattr(value, "type")):
            yield from _walk(value)


def _params_read(function: object) -> set[str]:
    """The names a view reads from its first parameter (`params.get("name")`), in its whole body."""
    if not function.params:
        return set()
    name = function.params[0].name
    return {
        node.arguments[0].value for node in _walk(function.body)
        if node.type == "CallExpression" and node.callee.type == "MemberExpression"
        and node.callee.object.type == "Identifier" and node.callee.object.name == name
        and node.callee.property.type == "Identifier" and node.callee.property.name == "get"
        and node.arguments and node.arguments[0].type == "Literal" and isinstance(node.arguments[0].value, str)
    }


def app_routes() -> dict[str, set[str]]:
    """app.js's hash routes ("#/message") → the query parameter names its view reads."""
    program = esprima.parseScript(APP_JS.read_text())
    functions = {n.id.name: n for n in program.body if n.type == "FunctionDeclaration"}
    tables = {
        d.id.name: d.init for n in program.body if n.type == "VariableDeclaration"
        for d in n.declarations if d.id.type == "Identifier" and d.id.name in ("PUBLIC", "PRIVATE")
    }
    assert set(tables) == {"PUBLIC", "PRIVATE"}, "app.js's route tables (PUBLIC, PRIVATE) were not found"
    routes: dict[str, set[str]] = {}
    for table in tables.values():
        for prop in table.properties:
            key, view = prop.key.value, prop.value
            if view.type == "Identifier":  # "#/message": viewMessage
                routes[key] = _params_read(functions[view.name])
            else:  # "#/inbox": () => viewFolder("inbox"): no query reaches the view
                assert view.type in ("ArrowFunctionExpression", "FunctionExpression"), key
                routes[key] = _params_read(view)
    return routes


# ---- the links in the services' mails ------------------------------------------------------------

@dataclass(frozen=True)
class LinkTemplate:
    where: str  # file:line
    fragment: str  # after "#/", values as {}: "message?id={}"


def _text(node: ast.expr) -> str | None:
    """A string literal or f-string as a template, values as {}; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else HOLE for v in node.values)
    return None


class _Finder(ast.NodeVisitor):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.functions: list[str] = []
        self.found: list[LinkTemplate] = []
        self.problems: list[str] = []
        self._skip: set[int] = set()  # the literal parts of f-strings (the f-string is read whole)

    def _at(self, node: ast.AST) -> str:
        return f"{self.path.relative_to(ROOT)}:{node.lineno}"

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.functions.append(node.name)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            self._skip.add(id(body[0].value))  # a docstring may mention routes in prose
        self.generic_visit(node)
        self.functions.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Module(self, node: ast.Module) -> None:
        if node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            self._skip.add(id(node.body[0].value))
        self.generic_visit(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        self._skip.update(id(v) for v in node.values)
        if id(node) not in self._skip:
            self._literal(node)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if id(node) not in self._skip:
            self._literal(node)

    def _literal(self, node: ast.expr) -> None:
        text = _text(node)
        if text is None or "#/" not in text:
            return
        fragment = text.split("#/", 1)[1]
        if fragment == "" and self.functions and self.functions[-1] == "link":
            return  # a link(fragment) helper's own "/#/" prefix: its callers are checked instead
        self.found.append(LinkTemplate(self._at(node), fragment))

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if (isinstance(func, ast.Attribute) and func.attr == "link"
                and not (isinstance(func.value, ast.Name) and func.value.id == "os")):  # os.link makes hard links
            text = _text(node.args[0]) if len(node.args) == 1 and not node.keywords else None
            if text is None:
                self.problems.append(f"{self._at(node)}: link(...) with no literal route; write the route out")
            else:
                self.found.append(LinkTemplate(self._at(node), text.lstrip("/")))
                self._skip.add(id(node.args[0]))
        self.generic_visit(node)


def link_templates() -> tuple[list[LinkTemplate], list[str]]:
    found: list[LinkTemplate] = []
    problems: list[str] = []
    for source in SOURCES:
        for path in sorted(source.rglob("*.py")):
            finder = _Finder(path)
            finder.visit(ast.parse(path.read_text(), filename=str(path)))
            found += finder.found
            problems += finder.problems
    return found, problems


def check(template: LinkTemplate, routes: dict[str, set[str]]) -> str | None:
    """Why this link would not open its page, or None."""
    path, _, query = template.fragment.partition("?")
    route = "#/" + path
    if route not in routes:
        return f"{template.where}: #/{template.fragment}: app.js has no route {route!r} (it would open the Inbox)"
    names = [name for name, _ in parse_qsl(query, keep_blank_values=True)]
    unread = sorted(set(names) - routes[route])
    if unread:
        return f"{template.where}: #/{template.fragment}: the {route} view reads no {unread} (it reads {sorted(routes[route])})"
    if HOLE in path:
        return f"{template.where}: #/{template.fragment}: a value in the route's path, not in its query"
    return None


# ---- tests -------------------------------------------------------------------------------------------

def test_app_routes_are_read_with_the_query_names_their_views_use() -> None:
    routes = app_routes()
    assert routes["#/message"] == {"id"}
    assert routes["#/register"] == {"token"} and routes["#/reset"] == {"token"}
    assert routes["#/change-password"] == set() and routes["#/inbox"] == set()
    assert "#/messages" not in routes


def test_every_link_a_service_mails_names_a_route_the_web_app_handles() -> None:
    templates, problems = link_templates()
    # The finder finds what it must (else this test would pass on nothing).
    fragments = {t.fragment for t in templates}
    assert {"register?token={}", "reset?token={}", "confirm-email?token={}", "message?id={}", "change-password",
            "forgot", "sent"} <= fragments, sorted(fragments)
    routes = app_routes()
    broken = [why for t in templates if (why := check(t, routes))]
    assert not problems + broken, "\n".join(problems + broken)


@pytest.mark.parametrize(("source", "why"), [
    ('link = url + f"/#/messages/{message_id}"', "no route '#/messages/{}'"),
    ('c.link(f"message?message_id={mid}")', "reads no ['message_id']"),
    ('c.link("messages?folder=sent")', "no route '#/messages'"),
    ('c.link(fragment)', "no literal route"),
])
def test_the_check_catches_links_to_routes_the_app_lacks(source: str, why: str) -> None:
    path = ROOT / "shared" / "src" / "example.py"  # a name under ROOT, for the messages; never written
    finder = _Finder(path)
    finder.visit(ast.parse(source))
    routes = app_routes()
    found = finder.problems + [w for t in finder.found if (w := check(t, routes))]
    assert len(found) == 1 and why in found[0], found


def test_good_links_pass_the_check() -> None:
    finder = _Finder(ROOT / "shared" / "src" / "example.py")
    finder.visit(ast.parse('c.link(f"message?id={mid}")\nurl + f"/#/register?token={raw}"\nos.link(a, b)'))
    assert not finder.problems
    assert [check(t, app_routes()) for t in finder.found] == [None, None]
