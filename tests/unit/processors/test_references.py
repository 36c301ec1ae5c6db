"""RFC 5256 (1)(A) ids of a message, as both threading paths read them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from inboxstream.mail.limits import MAX_REFERENCES, cap_references
from inboxstream.processors.references import reference_ids

_ids = st.lists(
    st.sampled_from(["", "a@x", "b@x", *(f"m{i}@x" for i in range(MAX_REFERENCES + 20))]),
    max_size=MAX_REFERENCES + 40,
)


@given(_ids, _ids)
def test_reference_ids_are_the_references_deduplicated_or_the_first_in_reply_to(
    references: list[str], in_reply_to: list[str]
) -> None:
    """The definition, written the plain way: References (else the first In-Reply-To id),
    first occurrences in order, no empty id, capped as the producer caps them."""
    plain = [r for r in dict.fromkeys(references or in_reply_to[:1]) if r]
    expected = cap_references(plain)[0]
    got = reference_ids(references, in_reply_to)
    assert got == expected
    assert len(got) <= MAX_REFERENCES


def test_the_first_and_the_last_ids_of_a_long_list_are_kept() -> None:
    refs = [f"m{i}@x" for i in range(MAX_REFERENCES + 50)]
    got = reference_ids(refs + refs, [])
    assert got == [refs[0], *refs[-(MAX_REFERENCES - 1) :]]
