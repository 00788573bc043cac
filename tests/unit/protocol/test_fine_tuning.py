"""Fine-tuned model names (protocol/fine_tuning.py): whose a model is, is told from its name,
the same way in every region, and no other tenant's name passes for it."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.fine_tuning import fine_tuned_name, is_fine_tuned, owned_by, owner_tag, stacked_name

JOB = "ftjob-" + "A" * 24


def test_names_have_openais_shape_with_the_owners_tag_for_the_organization() -> None:
    tag = owner_tag("alice")
    assert re.fullmatch(r"[a-z2-7]{16}", tag)  # 80 bits, lowercase base32
    assert tag == owner_tag("alice") != owner_tag("alice ")
    assert (
        fine_tuned_name("Qwen/Qwen2.5-0.5B-Instruct", "alice", "bot", JOB)
        == f"ft:Qwen--Qwen2.5-0.5B-Instruct:{tag}:bot:{JOB}"
    )
    assert fine_tuned_name("tiny", "alice", None, JOB) == f"ft:tiny:{tag}::{JOB}"
    assert stacked_name("tiny", "alice", "bot") == f"ft:tiny:{tag}:bot"
    assert stacked_name("tiny", "alice", None) is None  # nothing to share without a suffix
    odd = fine_tuned_name("a:b c", "alice", "s", JOB).split(":")[1]
    assert re.fullmatch(r"a-b-c-[0-9a-f]{8}", odd)  # no `:` ever gets in


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("org1/Llama-3-8B", "org2/Llama-3-8B"),
        ("m:v1", "m-v1"),
        ("m v1", "m-v1"),
        ("m:v1", "m v1"),
        ("a/b", "a-b"),
        ("a/b", "a--b"),
        ("a/b/c", "a--b/c"),
    ],
)
def test_bases_of_one_last_name_or_spelling_stay_apart(one: str, other: str) -> None:
    assert stacked_name(one, "alice", "bot") != stacked_name(other, "alice", "bot")


def test_a_model_is_its_owners_whether_a_jobs_or_a_stack() -> None:
    own, stacked = fine_tuned_name("tiny", "alice", "bot", JOB), str(stacked_name("tiny", "alice", "bot"))
    for name in (own, stacked, fine_tuned_name("tiny", "alice", None, JOB)):
        assert is_fine_tuned(name)
        assert owned_by(name, "alice")
        assert not owned_by(name, "bob")
    tag = owner_tag("alice")
    for name in (
        f"ft:tiny:{tag}",  # too few parts
        f"ft:tiny:{tag}:bot:{JOB}:ckpt-step-4",  # a checkpoint's name, never served
        f"xx:tiny:{tag}:bot",
        f"ft:{tag}:tiny:bot",
        "tiny",
    ):
        assert not owned_by(name, "alice"), name


@given(
    tenant=st.text(max_size=40),
    other=st.text(max_size=40),
    suffix=st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True),
)
def test_no_other_tenant_owns_a_tenants_names(tenant: str, other: str, suffix: str) -> None:
    names = (fine_tuned_name("tiny", tenant, suffix, JOB), str(stacked_name("tiny", tenant, suffix)))
    assert all(owned_by(name, tenant) for name in names)  # lone surrogates and all
    if other != tenant:
        assert not any(owned_by(name, other) for name in names)
