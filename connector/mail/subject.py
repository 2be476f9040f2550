"""The MSSanté subject line (Référentiel #2 ECO.2.1.3) and the one-line text cleaning headers need.

`XDM/1.0/DDM+<libellé> <NOM> <prénom> <JJ/MM/AAAA>`. The subject names the patient: it is health
data, it goes in the e-mail and nowhere else (never in a log or an exception message).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import date
from typing import Final

from connector.errors import ProfileError

SUBJECT_PREFIX: Final = "XDM/1.0/DDM+"
MAX_LABEL_LENGTH: Final = 40
#: Libellé used when the single document has no usable display name.
FALLBACK_LABEL: Final = "Document"

# Letters that carry no combining accent in Unicode but have a usual ASCII spelling in names.
_LETTERS: Final = str.maketrans(
    {
        "Æ": "AE", "æ": "ae", "Œ": "OE", "œ": "oe", "Ø": "O", "ø": "o", "ß": "ss",
        "Đ": "D", "đ": "d", "Ð": "D", "ð": "d", "Ł": "L", "ł": "l", "Þ": "TH", "þ": "th",
        "ı": "i",
    }
)  # fmt: skip


def single_line(text: str) -> str:
    """`text` made safe for one header line; used for the subject parts and display names.

    * NFC-normalised;
    * control characters (C0, DEL, C1 including CR, LF, TAB, VT, FF, NEL), line and paragraph
      separators and every other kind of white space become a space, runs of spaces become one
      space, and leading and trailing spaces go;
    * invisible format characters (zero-width spaces and joiners, bidirectional overrides, BOM) and
      lone surrogates are removed;
    * the two characters `=?`, which open an RFC 2047 encoded-word, are written `= ?`: a mail reader
      (and Python's own `email` package) would otherwise decode such text, and an encoded-word can
      carry an encoded CR/LF that splits the header on serialisation (CVE-2024-6923).
    """
    kept: list[str] = []
    for ch in unicodedata.normalize("NFC", text):
        category = unicodedata.category(ch)
        if category in ("Cc", "Zl", "Zp") or ch.isspace():
            kept.append(" ")
        elif category not in ("Cf", "Cs"):
            kept.append(ch)
    return " ".join("".join(kept).split()).replace("=?", "= ?")


def strip_accents(text: str) -> str:
    """Remove accents (é → e, Ç → C), spell ligatures and special letters in ASCII (Œ → OE, ß → ss).

    Compatibility forms are folded too (ﬁ → fi, full-width letters → ASCII). Characters of other
    scripts, which have no accent to remove, are kept as they are.
    """
    decomposed = unicodedata.normalize("NFKD", text.translate(_LETTERS))
    return unicodedata.normalize(
        "NFC", "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    )


@dataclass(frozen=True, slots=True, repr=False)
class SubjectInput:
    """What the subject is made of. All of it except `document_labels` is patient identity.

    `document_labels`: the CDA `code/@displayName` of each document in the IHE_XDM archive, in order
    (at least one). `birth_name`: the birth name (nom de naissance, `family@qualifier="BR"`).
    `given_name`: the first birth given name. `birth_date`: None when unknown or partial.
    """

    document_labels: tuple[str, ...]
    birth_name: str
    given_name: str
    birth_date: date | None = None

    def __post_init__(self) -> None:
        if not self.document_labels:
            raise ValueError("a MSSanté subject names at least one document")

    def __repr__(self) -> str:
        return f"SubjectInput(<redacted>, documents={len(self.document_labels)})"


def build_subject(spec: SubjectInput) -> str:
    """`XDM/1.0/DDM+<libellé> <NOM> <prénom>[ <JJ/MM/AAAA>]`, one line, for the Subject header.

    * libellé: with one document, its display name cleaned by `single_line` and cut to 40
      characters (trailing space removed; accents kept); when that is empty, `Document`. With
      several documents, `N documents`.
    * NOM: the birth name cleaned, upper-cased, without accents (`strip_accents`).
    * prénom: the given name cleaned, without accents, case kept as given.
    * date of birth: JJ/MM/AAAA, left out when None (the only optional part of ECO.2.1.3).

    Every part goes through `single_line` first: control characters and line breaks become spaces,
    so no part can span two lines. A birth name or given name that is empty after cleaning raises
    `ProfileError` (ECO.2.1.3 makes them mandatory; the detail names the part, not its value).
    """
    name = strip_accents(single_line(spec.birth_name).upper())
    given = strip_accents(single_line(spec.given_name))
    # Accent folding can produce `=?` from full-width forms: clean once more.
    name, given = single_line(name), single_line(given)
    if not name:
        raise ProfileError("MSSanté subject: the patient's birth name is empty")
    if not given:
        raise ProfileError("MSSanté subject: the patient's given name is empty")
    parts = [_label(spec.document_labels), name, given]
    if spec.birth_date is not None:
        day = spec.birth_date
        parts.append(f"{day.day:02d}/{day.month:02d}/{day.year:04d}")
    return SUBJECT_PREFIX + " ".join(parts)


def _label(labels: tuple[str, ...]) -> str:
    if len(labels) > 1:
        return f"{len(labels)} documents"
    label = single_line(labels[0])[:MAX_LABEL_LENGTH].rstrip(" ")
    return label or FALLBACK_LABEL
