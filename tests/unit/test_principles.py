"""Unit tests for sso.data.principles (feature catalogue, seeded choice, system messages)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pandas as pd
import pytest

from sso.data import principles as P
from sso.data.principles import (
    ALL_FEATURES,
    CONCISION,
    FALLBACK_BAD,
    FALLBACK_GOOD,
    FEATURES,
    TEMPLATE_VERSION,
    Feature,
    build_catalogue_principles,
    choose_features,
    render_system_message,
)

EXPECTED = {
    "Safety": ("safe", "unsafe"),
    "Logicality": ("logical", "illogical"),
    "Comprehensiveness": ("comprehensive", "incomplete"),
    "Helpfulness": ("helpful", "unhelpful"),
    "Literariness": ("literary", "boring"),
    "Accuracy": ("accurate", "inaccurate"),
    "Engagement": ("engaging", "dull"),
}


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


# ---------------------------------------------------------------------------- catalogue


def test_catalogue_names_and_adjectives():
    assert list(FEATURES) == list(EXPECTED)
    for name, (good, bad) in EXPECTED.items():
        f = FEATURES[name]
        assert f.name == name
        assert (f.good_adjective, f.bad_adjective) == (good, bad)
    assert (CONCISION.name, CONCISION.good_adjective, CONCISION.bad_adjective) == (
        "Concision",
        "concise",
        "verbose",
    )
    assert "Concision" not in FEATURES
    assert list(ALL_FEATURES) == list(EXPECTED) + ["Concision"]
    assert TEMPLATE_VERSION == "v1"


@pytest.mark.parametrize("feature", list(FEATURES.values()) + [CONCISION], ids=lambda f: f.name)
def test_feature_texts_non_empty_distinct_and_sized(feature: Feature):
    for text in (feature.good_adjective, feature.bad_adjective, feature.good_principle,
                 feature.bad_principle):
        assert isinstance(text, str) and text.strip() == text and text
    assert feature.good_adjective != feature.bad_adjective
    assert feature.good_principle != feature.bad_principle
    good_s, bad_s = _sentences(feature.good_principle), _sentences(feature.bad_principle)
    assert 2 <= len(good_s) <= 4
    assert 2 <= len(bad_s) <= 4
    # mirrored structure: same number of sentences
    assert len(good_s) == len(bad_s)
    # neither principle contains the other
    assert feature.good_principle not in feature.bad_principle
    assert feature.bad_principle not in feature.good_principle


def test_feature_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        FEATURES["Safety"].name = "x"  # type: ignore[misc]


def test_all_principle_texts_unique():
    texts = [t for f in ALL_FEATURES.values() for t in (f.good_principle, f.bad_principle)]
    assert len(set(texts)) == len(texts)


def test_module_does_not_import_heavy_dependencies():
    code = (
        "import sys; import sso.data.principles; "
        "bad = [m for m in ('metaflow', 'vllm', 'openai', 'torch') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# ---------------------------------------------------------------------------- choose_features


def test_choose_features_deterministic_and_order_independent():
    ids = [f"q{i}" for i in range(200)]
    forward = {q: choose_features(q, seed=7) for q in ids}
    backward = {q: choose_features(q, seed=7) for q in reversed(ids)}
    assert forward == backward
    # interleave unrelated calls with other seeds / k: no shared state
    for q in ids[:50]:
        choose_features("other-" + q, seed=3, k=5)
        assert choose_features(q, seed=7) == forward[q]


def test_choose_features_stable_across_processes():
    # A fresh interpreter (different PYTHONHASHSEED) must agree: no use of hash().
    ids = ["a", "b", "query-42", "ü-ñ"]
    code = (
        "import json; from sso.data.principles import choose_features; "
        f"print(json.dumps([choose_features(q, seed=11) for q in {ids!r}]))"
    )
    import json
    import os

    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert json.loads(out.stdout) == [choose_features(q, seed=11) for q in ids]


def test_choose_features_differs_across_seeds():
    ids = [f"q{i}" for i in range(100)]
    differing = sum(choose_features(q, seed=0) != choose_features(q, seed=1) for q in ids)
    assert differing > 10


@pytest.mark.parametrize("k", range(1, 8))
def test_choose_features_shape(k):
    seen = set()
    for i in range(300):
        names = choose_features(f"id-{i}", seed=5, k=k)
        core = names[:k]
        assert len(core) == k
        assert len(set(core)) == k
        assert all(n in FEATURES for n in core)
        assert names[k:] in ([], ["Concision"])
        assert "Concision" not in core
        seen.update(core)
    assert seen == set(FEATURES)  # every feature gets picked eventually


def test_choose_features_concision_rate():
    hits = sum(choose_features(f"q{i}", seed=123)[-1] == "Concision" for i in range(2000))
    assert abs(hits / 2000 - 0.2) <= 0.04


def test_choose_features_concision_prob_extremes():
    for i in range(500):
        assert "Concision" not in choose_features(f"q{i}", seed=1, concision_prob=0)
        always = choose_features(f"q{i}", seed=1, concision_prob=1)
        assert always[-1] == "Concision" and len(always) == 3


def test_choose_features_core_independent_of_concision_prob():
    for i in range(100):
        a = choose_features(f"q{i}", seed=9, concision_prob=0.0)
        b = choose_features(f"q{i}", seed=9, concision_prob=1.0)
        assert a == b[:2]


@pytest.mark.parametrize("k", [0, 8, -1, 2.0, True])
def test_choose_features_bad_k(k):
    with pytest.raises(ValueError, match="k"):
        choose_features("q", seed=0, k=k)


@pytest.mark.parametrize("p", [-0.01, 1.01, float("nan"), "0.2"])
def test_choose_features_bad_concision_prob(p):
    with pytest.raises(ValueError, match="concision_prob"):
        choose_features("q", seed=0, concision_prob=p)


# ---------------------------------------------------------------------------- render


def _all_principles(polarity: str) -> list[str]:
    return [f.principle(polarity) for f in ALL_FEATURES.values()]


@pytest.mark.parametrize(
    "names",
    [["Safety", "Accuracy"], ["Helpfulness"], ["Engagement", "Logicality", "Concision"],
     list(FEATURES)],
)
def test_render_contains_exactly_the_chosen_features(names):
    good = render_system_message(names, "good")
    bad = render_system_message(names, "bad")
    for polarity, msg in (("good", good), ("bad", bad)):
        for name, f in ALL_FEATURES.items():
            line = f"{name}: {f.principle(polarity)}"
            if name in names:
                assert line in msg
                assert re.search(rf"\b{re.escape(f.adjective(polarity))}\b", msg)
            else:
                assert f.principle(polarity) not in msg
                assert f"{name}:" not in msg
        # the other polarity's principles never leak in
        other = "bad" if polarity == "good" else "good"
        for text in _all_principles(other):
            assert text not in msg
    assert "relatively good" in good and "relatively bad" in bad
    assert "guidelines" in good.lower() and "reveal" in good.lower()
    assert "reveal" in bad.lower()
    # bad adjectives do not appear as whole words in the good message, and vice versa
    for n in names:
        f = ALL_FEATURES[n]
        assert not re.search(rf"\b{re.escape(f.bad_adjective)}\b", good)
        assert not re.search(rf"\b{re.escape(f.good_adjective)}\b", bad)


def test_render_same_structure_for_both_polarities():
    names = ["Accuracy", "Literariness", "Concision"]
    good = render_system_message(names, "good")
    bad = render_system_message(names, "bad")
    # replacing the polarity-dependent parts gives identical skeletons
    def skeleton(msg, polarity):
        msg = msg.replace(f"relatively {polarity}", "relatively {Q}")
        for n in names:
            f = ALL_FEATURES[n]
            msg = msg.replace(f.principle(polarity), "{P}")
            msg = re.sub(rf"\b{re.escape(f.adjective(polarity))}\b", "{A}", msg)
        return msg

    assert skeleton(good, "good") == skeleton(bad, "bad")
    assert good.index("Accuracy:") < good.index("Literariness:") < good.index("Concision:")


def test_render_adjective_list_formatting():
    assert "should be safe and accurate." in render_system_message(["Safety", "Accuracy"], "good")
    assert "should be dull, boring and verbose." in render_system_message(
        ["Engagement", "Literariness", "Concision"], "bad"
    )
    assert "should be helpful." in render_system_message(["Helpfulness"], "good")


def test_render_unknown_feature_lists_allowed_names():
    with pytest.raises(ValueError) as exc:
        render_system_message(["Safety", "Humour"], "good")
    msg = str(exc.value)
    assert "Humour" in msg
    for name in ALL_FEATURES:
        assert name in msg


@pytest.mark.parametrize("polarity", ["Good", "neutral", "", None])
def test_render_bad_polarity(polarity):
    with pytest.raises(ValueError, match="polarity"):
        render_system_message(["Safety"], polarity)


@pytest.mark.parametrize("names", [[], ["Safety", "Safety"], "Safety"])
def test_render_bad_feature_lists(names):
    with pytest.raises(ValueError):
        render_system_message(names, "good")


def test_templates_are_format_strings():
    assert {"quality", "adjectives", "guidelines"} <= set(
        re.findall(r"{(\w+)}", P.SYSTEM_MESSAGE_TEMPLATE)
    )
    assert set(re.findall(r"{(\w+)}", P.GUIDELINE_LINE_TEMPLATE)) == {"name", "principle"}


def test_fallback_pair():
    assert FALLBACK_GOOD != FALLBACK_BAD
    assert "helpful" in FALLBACK_GOOD and "unhelpful" in FALLBACK_BAD
    assert "unhelpful" not in FALLBACK_GOOD
    assert "relatively good" in FALLBACK_GOOD and "relatively bad" in FALLBACK_BAD
    assert FALLBACK_GOOD == render_system_message(["Helpfulness"], "good")
    assert FALLBACK_BAD == render_system_message(["Helpfulness"], "bad")


# ---------------------------------------------------------------------------- build


def _queries(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"query_id": [f"uf-{i:05d}" for i in range(n)], "prompt": [f"Question {i}?" for i in range(n)]}
    )


def test_build_rows_columns_order():
    q = _queries(50)
    out = build_catalogue_principles(q, seed=3)
    assert list(out.columns) == ["query_id", "features", "good_principle", "bad_principle", "source"]
    assert len(out) == len(q)
    assert out["query_id"].tolist() == q["query_id"].tolist()
    assert list(out.index) == list(range(len(q)))
    assert (out["source"] == "catalogue").all()
    for _, row in out.iterrows():
        assert isinstance(row["features"], list)
        assert row["features"] == choose_features(row["query_id"], seed=3)
        assert row["good_principle"] == render_system_message(row["features"], "good")
        assert row["bad_principle"] == render_system_message(row["features"], "bad")


def test_build_per_row_determinism_under_shuffle_and_split():
    q = _queries(120)
    full = build_catalogue_principles(q, seed=42).set_index("query_id")

    shuffled = q.sample(frac=1.0, random_state=0)
    out_shuf = build_catalogue_principles(shuffled, seed=42)
    assert out_shuf["query_id"].tolist() == shuffled["query_id"].tolist()
    pd.testing.assert_frame_equal(out_shuf.set_index("query_id").loc[full.index], full)

    parts = [build_catalogue_principles(q.iloc[i::3], seed=42) for i in range(3)]
    merged = pd.concat(parts).set_index("query_id").loc[full.index]
    pd.testing.assert_frame_equal(merged, full)


def test_build_passes_k_and_concision_prob():
    out = build_catalogue_principles(_queries(30), seed=1, k=3, concision_prob=1.0)
    assert all(len(f) == 4 and f[-1] == "Concision" for f in out["features"])
    with pytest.raises(ValueError, match="k"):
        build_catalogue_principles(_queries(3), seed=1, k=0)


def test_build_missing_column():
    with pytest.raises(ValueError, match="query_id"):
        build_catalogue_principles(pd.DataFrame({"prompt": ["hi"]}), seed=0)


def test_build_duplicate_ids():
    q = pd.DataFrame({"query_id": ["a", "b", "a"], "prompt": ["x", "y", "z"]})
    with pytest.raises(ValueError, match="duplicate"):
        build_catalogue_principles(q, seed=0)


def test_build_empty_input():
    out = build_catalogue_principles(_queries(0), seed=0)
    assert len(out) == 0
    assert list(out.columns) == ["query_id", "features", "good_principle", "bad_principle", "source"]
