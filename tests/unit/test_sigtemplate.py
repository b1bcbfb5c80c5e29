"""Outpost's signature templates: what its defaults and docs use renders as Go would;
anything else is refused with a reason."""

from __future__ import annotations

import pytest

from relay import sigtemplate
from relay.sigtemplate import Field, Join, TemplateError


def render(source: str, kind: sigtemplate.Kind) -> bytes:
    return sigtemplate.parse(source, kind).render(
        event_id="evt_1", topic="a.b", unix=1717230216, body=b'{"x":1}', signatures=["s1", "s2"]
    )


@pytest.mark.parametrize(
    ("source", "kind", "rendered"),
    [
        ("{{.Body}}", "content", b'{"x":1}'),
        ("{{.Timestamp.Unix}}.{{.Body}}", "content", b'1717230216.{"x":1}'),
        ("{{ .EventID }}.{{.Topic}}.{{.Body}}", "content", b'evt_1.a.b.{"x":1}'),
        ('v0={{.Signatures | join ","}}', "header", b"v0=s1,s2"),
        ('t={{.Timestamp.Unix}},v0={{.Signatures | join ","}}', "header", b"t=1717230216,v0=s1,s2"),
        ("{{.Signatures|join `; `}}", "header", b"s1; s2"),
        ("no actions at all }}", "header", b"no actions at all }}"),
    ],
)
def test_documented_templates_render_as_go_does(
    source: str, kind: sigtemplate.Kind, rendered: bytes
) -> None:
    assert render(source, kind) == rendered


def test_the_defaults_parse_to_the_forms_the_hot_path_recognises() -> None:
    assert sigtemplate.parse("{{.Body}}", "content").parts == (Field("Body"),)
    assert sigtemplate.parse('v0={{.Signatures | join ","}}', "header").parts == (
        "v0=",
        Join(","),
    )


@pytest.mark.parametrize(
    ("source", "kind", "words"),
    [
        ("", "content", "must not be empty"),
        ("{{.Timestamp}}", "content", "use {{.Timestamp.Unix}}"),
        ("{{.Body}}", "header", "not available in the header template"),
        ('{{.Signatures | join ","}}', "content", "not available in the content template"),
        ("{{.Signatures}}", "header", "join"),
        ("{{index .Signatures 0}}", "header", "not supported"),
        ('{{.Timestamp.Format "2006"}}', "content", "not supported"),
        ("{{- .Body}}", "content", "trim markers"),
        ("{{.Body", "content", "never closed"),
        ('{{.Signatures | join "\\n"}}', "header", "not supported"),
        ("{{.Data}}", "content", "not supported"),
    ],
)
def test_anything_else_is_refused_with_a_reason(
    source: str, kind: sigtemplate.Kind, words: str
) -> None:
    with pytest.raises(TemplateError) as info:
        sigtemplate.parse(source, kind)
    assert words in str(info.value)
