"""The text query language: plain words, `+term`, `-term`, `term^2` and quoted phrases.

    a dog on grass            one concept
    beach -people             "beach" minus "people"
    mountains +snow           "mountains" plus "snow" as a separate concept
    "red car"^2 street        the phrase weighted twice, plus "street"
    cat -"cat toy"^0.5        subtract half of a phrase

Plain words are joined into one phrase (CLIP reads phrases better than single words);
each `+`/`-` term or weighted term is its own concept. The query vector is the weighted
sum of the concepts' unit vectors, normalised again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from wmpd.errors import QueryError

MAX_QUERY_CHARS = 1000
MAX_TERMS = 16
_TOKEN = re.compile(r'([+-]?)(?:"([^"]*)"|(\S+?))(?:\^(\S+))?(?=\s|$)')


@dataclass(frozen=True)
class Term:
    text: str
    weight: float


def parse_query(query: str, parameter: str = "q") -> list[Term]:
    """Turn a query string into weighted terms; raises QueryError naming the parameter."""
    text = query.strip()
    if not text:
        raise QueryError(
            parameter, "the query is empty; describe the picture, e.g. 'a dog on grass'"
        )
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(parameter, f"the query is longer than {MAX_QUERY_CHARS} characters")
    plain: list[str] = []
    terms: list[Term] = []
    position = 0
    for match in _TOKEN.finditer(text):
        if text[position : match.start()].strip():
            raise QueryError(parameter, f"cannot read {text[position : match.start()]!r}")
        position = match.end()
        sign, quoted, word, weight_text = match.groups()
        phrase = (quoted if quoted is not None else word).strip()
        if not phrase:
            continue
        weight = _parse_weight(weight_text, parameter) if weight_text else 1.0
        if not sign and weight_text is None and quoted is None:
            plain.append(phrase)
            continue
        terms.append(Term(phrase, -weight if sign == "-" else weight))
    if plain:
        terms.insert(0, Term(" ".join(plain), 1.0))
    if not terms:
        raise QueryError(parameter, "the query has no terms")
    if len(terms) > MAX_TERMS:
        raise QueryError(parameter, f"at most {MAX_TERMS} terms are allowed")
    if all(term.weight <= 0 for term in terms):
        raise QueryError(
            parameter,
            "the query only subtracts; add what you are looking for, e.g. 'beach -people'",
        )
    return terms


def _parse_weight(text: str, parameter: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        raise QueryError(parameter, f"the weight ^{text} is not a number") from None
    if not 0 < weight <= 10:
        raise QueryError(parameter, f"the weight ^{text} must be between 0 and 10")
    return weight
