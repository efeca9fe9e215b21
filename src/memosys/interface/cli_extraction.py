"""`memosys extraction show|set|test CUBE`: a cube's extraction categories, rules and
instructions (memosys.system_extraction; docs/extraction-rules.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from memosys.errors import ValidationError
from memosys.interface.cli_common import HomeOpt, JsonOpt, out, print_json, runtime
from memosys.interface.reader_rules import slug

extraction_app = typer.Typer(
    help="Per-cube extraction: categories, never/always-remember rules, model instructions.",
    no_args_is_help=True)

def register(app: typer.Typer) -> None:
    app.add_typer(extraction_app, name="extraction")


@extraction_app.command("show")
def show(cube: str, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """The cube's categories, rules and instructions."""
    with runtime(home) as mos:
        config = mos.extraction_rules(cube)
    if as_json:
        print_json(config)
        return
    out.print(f"cube {config['cube_id']}  version {config['version']}  "
              f"(updated {config['updated_at'] or 'never'} by {config['updated_by'] or '-'})")
    if config["instructions"]:
        out.print(f"instructions: {config['instructions']}")
    cats = Table("category", "description", "keywords", title="categories")
    for c in config["categories"]:
        cats.add_row(c["name"], c["description"], ", ".join(c["keywords"]))
    out.print(cats)
    rules = Table("id", "name", "kind", "keywords", "patterns", "pii", "category",
                  title="rules")
    for r in config["rules"]:
        rules.add_row(r["id"], r["name"], r["kind"], ", ".join(r["keywords"]),
                      "  ".join(r["patterns"]), ", ".join(r["pii"]), r["category"] or "")
    out.print(rules)


def _pair(value: str, option: str) -> tuple[str, str]:
    name, sep, rest = value.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise ValidationError(f"{option} takes NAME=VALUE, got {value!r}")
    return name.strip(), rest.strip()


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _edited(current: dict[str, Any], *, file: Path | None, categories: list[str],
            remove: list[str], rule_opts: dict[str, list[str]]) -> dict[str, Any]:
    """The parts to send: the file's, then the options applied to the current lists."""
    changes: dict[str, Any] = {}
    if file is not None:
        text = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"{file}: not JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise ValidationError(f"{file}: expected an object with categories/rules/...")
        changes.update({k: v for k, v in loaded.items() if k != "version"})
    cats = {c["name"]: c for c in changes.get("categories", current["categories"])}
    rules = {r.get("id") or slug(r["name"]): r
             for r in changes.get("rules", current["rules"])}
    for value in categories:
        name, desc = _pair(value, "--category")
        cats[name] = {**cats.get(name, {"keywords": []}), "name": name, "description": desc}
    fields = {"--deny": ("deny", "keywords"), "--deny-regex": ("deny", "patterns"),
              "--deny-pii": ("deny", "pii"), "--deny-category": ("deny", "category"),
              "--allow": ("allow", "keywords")}
    for option, values in rule_opts.items():
        kind, field = fields[option]
        for value in values:
            name, rest = _pair(value, option)
            rid = slug(name)
            rule = rules.setdefault(rid, {"id": rid, "name": name, "kind": kind})
            if field == "category":
                rule["category"] = rest
            elif field == "patterns":
                rule["patterns"] = [*rule.get("patterns", []), rest]
            else:
                rule[field] = [*rule.get(field, []), *_csv(rest)]
    for key in remove:
        if cats.pop(key, None) is None and rules.pop(key, None) is None:
            raise ValidationError(f"no rule id or category named {key!r}")
    if categories or remove or "categories" in changes:
        changes["categories"] = list(cats.values())
    if rule_opts or remove or "rules" in changes:
        changes["rules"] = list(rules.values())
    return changes


@extraction_app.command("set")
def set_rules(
    cube: str,
    file: Annotated[Path | None, typer.Option(
        "--file", "-f", help="JSON with categories, rules, instructions, threshold "
        "(- reads stdin); replaces those parts.")] = None,
    instructions: Annotated[str | None, typer.Option(
        help="Free-text guidance for the model's extraction prompt.")] = None,
    category: Annotated[list[str] | None, typer.Option(
        "--category", help="NAME=DESCRIPTION: add or change a category.")] = None,
    deny: Annotated[list[str] | None, typer.Option(
        "--deny", help="NAME=kw1,kw2: never remember text with these words.")] = None,
    deny_regex: Annotated[list[str] | None, typer.Option(
        "--deny-regex", help="NAME=REGEX: never remember text matching it.")] = None,
    deny_pii: Annotated[list[str] | None, typer.Option(
        "--deny-pii", help="NAME=phone,email,...: never remember these PII kinds.")] = None,
    deny_category: Annotated[list[str] | None, typer.Option(
        "--deny-category", help="NAME=CATEGORY: never remember text of that category.")
    ] = None,
    allow: Annotated[list[str] | None, typer.Option(
        "--allow", help="NAME=kw1,kw2: always remember sentences with these words.")] = None,
    remove: Annotated[list[str] | None, typer.Option(
        "--remove", help="A rule id or category name to remove.")] = None,
    threshold: Annotated[float | None, typer.Option(
        help="Similarity a category needs (0-1].")] = None,
    expected_version: Annotated[int | None, typer.Option(
        help="Refuse (exit 4) unless the config is at this version.")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change the cube's extraction config (needs owner or admin rights on the cube).
    Options naming the same rule merge into it (e.g. --deny health=diabetes
    --deny-regex 'health=blood\\s+sugar')."""
    rule_opts = {k: v for k, v in (("--deny", deny), ("--deny-regex", deny_regex),
                                   ("--deny-pii", deny_pii),
                                   ("--deny-category", deny_category), ("--allow", allow))
                 if v}
    with runtime(home) as mos:
        current = mos.extraction_rules(cube)
        changes = _edited(current, file=file, categories=category or [],
                          remove=remove or [], rule_opts=rule_opts)
        if instructions is not None:
            changes["instructions"] = instructions
        if threshold is not None:
            changes["threshold"] = threshold
        if not changes:
            raise ValidationError("nothing to change: give --file or an option")
        config = mos.set_extraction_rules(cube, expected_version=expected_version, **changes)
    if as_json:
        print_json(config)
    else:
        out.print(f"extraction rules of {cube}: version {config['version']}, "
                  f"{len(config['rules'])} rules, {len(config['categories'])} categories")


@extraction_app.command("test")
def test_text(cube: str, text: str, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Dry run: which rule would refuse TEXT and which categories it gets (writes nothing)."""
    with runtime(home) as mos:
        result = mos.test_extraction_rules(cube, text)
    if as_json:
        print_json(result)
        return
    denied = result["denied_by"]
    out.print("direct write: " + (f"[red]refused[/red] by rule {denied['id']} "
                                  f"({denied['name']})" if denied else "[green]stored"))
    out.print(f"as a conversation turn: {result['as_raw_input']}", markup=False)
    out.print("categories: " + (", ".join(result["categories"]) or "none"))
    if result["allowed_by"]:
        out.print("always-remember rules: " + ", ".join(r["id"] for r in result["allowed_by"]))
