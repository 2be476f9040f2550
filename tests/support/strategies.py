"""Hypothesis strategies shared by several test modules."""

from __future__ import annotations

from hypothesis import strategies as st

# Address-shaped text (a local part, `@`, dot-separated labels) with junk in every part, about a
# quarter of it a valid mailbox: plain `st.text()` almost never draws one, which leaves the
# assertions on accepted addresses unexercised.
ADDRESS_LIKE = st.builds(
    lambda before, local, labels, after: f"{before}{local}@{'.'.join(labels)}{after}",
    st.sampled_from(["", "", "", " ", "<", "\t"]),
    st.one_of(st.from_regex(r"[A-Za-z0-9+'_-]{1,8}(\.[A-Za-z0-9+'_-]{1,8}){0,2}",
                            fullmatch=True),
              st.text(alphabet=st.sampled_from(list("abcXYZ019.-_+'é \"<>@")), max_size=20)),
    st.lists(st.one_of(st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?",
                                     fullmatch=True),
                       st.text(alphabet=st.sampled_from(list("abcz09-éÉ_")), max_size=12)),
             min_size=1, max_size=4).map(lambda labels: labels if len(labels) > 1 else
                                         [*labels, "fr"]),
    st.sampled_from(["", "", "", " ", ">", "\r\n", "."]),
)
