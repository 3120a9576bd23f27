"""Claims of edge/models/sources/__init__.py that its mutants showed untested (docs/MUTATION.md,
issue 21): how a hub is picked (--source, QWEN3_EDGE_SOURCE, Hugging Face by default), the names and
aliases it answers to, the other hubs a hint names, and which hub a model reference's host means.
Pure and fast: the sources are only made, no hub is reached."""

from __future__ import annotations

import pytest

from edge.models.sources import (SOURCE_ENV, PullError, choose_source, get_source, other_sources,
                                 source_for_host)


@pytest.mark.parametrize("spelling, name", [
    ("hf", "hf"), ("huggingface", "hf"), ("Hugging-Face", "hf"), (" HF ", "hf"),
    ("modelscope", "modelscope"), ("ms", "modelscope"), ("ModelScope", "modelscope")])
def test_each_name_and_alias_gives_its_hub(spelling, name):
    """`--source` takes a hub's name or an alias, any case, spaces trimmed: hf / huggingface /
    hugging-face, modelscope / ms."""
    source = get_source(spelling)
    assert source.name == name
    assert type(source).__name__ == {"hf": "HuggingFace", "modelscope": "ModelScope"}[name]


def test_an_unknown_name_is_refused_naming_the_hubs():
    """A name that is no hub's is a PullError listing hf and modelscope."""
    with pytest.raises(PullError, match="unknown source 'gitee'; choose one of hf, modelscope"):
        get_source("gitee")


def test_hugging_face_by_default_and_not_named(monkeypatch):
    """Neither --source nor QWEN3_EDGE_SOURCE: Hugging Face, and the user did not name it."""
    monkeypatch.delenv(SOURCE_ENV, raising=False)
    source, named = choose_source(None)
    assert (source.name, named) == ("hf", False)


def test_the_environment_variable_picks_the_hub(monkeypatch):
    """QWEN3_EDGE_SOURCE=modelscope picks ModelScope, as named by the user."""
    assert SOURCE_ENV == "QWEN3_EDGE_SOURCE"
    monkeypatch.setenv("QWEN3_EDGE_SOURCE", "modelscope")
    source, named = choose_source(None)
    assert (source.name, named) == ("modelscope", True)


def test_the_option_wins_over_the_environment(monkeypatch):
    """--source is taken before QWEN3_EDGE_SOURCE."""
    monkeypatch.setenv("QWEN3_EDGE_SOURCE", "modelscope")
    source, named = choose_source("hf")
    assert (source.name, named) == ("hf", True)
    monkeypatch.delenv("QWEN3_EDGE_SOURCE")
    assert choose_source("ms")[0].name == "modelscope"


def test_the_other_hubs_are_every_hub_but_this_one():
    """The hint for a hub that is down names the other hubs, not the one that failed."""
    assert other_sources(get_source("hf")) == ["modelscope"]
    assert other_sources(get_source("modelscope")) == ["hf"]


@pytest.mark.parametrize("host, name", [
    ("hf.co", "hf"), ("HuggingFace.co", "hf"), ("modelscope.cn", "modelscope"), ("www.modelscope.cn", "modelscope"),
    ("example.com", None)])
def test_a_references_host_names_its_hub(host, name):
    """A model reference's host (any case) gives the hub it belongs to; an unknown host gives none."""
    source = source_for_host(host)
    assert (source.name if source is not None else None) == name
