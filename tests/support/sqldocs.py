"""The named queries of docs/sql.md, for the tests and the scale bench."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "sql.md"


def documented_queries() -> dict[str, str]:
    queries = {}
    for block in re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.S):
        match = re.match(r"-- name: (\w+)\n", block)
        assert match, f"every sql block in docs/sql.md starts with '-- name:': {block[:60]}"
        queries[match.group(1)] = block
    return queries


def bind(sql: str, **values: str) -> str:
    """psql's :'name' variables, substituted as quoted literals."""

    def literal(match: re.Match[str]) -> str:
        value = values[match.group(1)]
        return "'" + value.replace("'", "''") + "'"

    return re.sub(r":'(\w+)'", literal, sql)
