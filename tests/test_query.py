"""The text query language: plain words, +term, -term, ^weights, quoted phrases, errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wmpd.errors import QueryError
from wmpd.query import MAX_QUERY_CHARS, MAX_TERMS, Term, parse_query


@pytest.mark.parametrize(
    ("query", "terms"),
    [
        ("a dog on grass", [Term("a dog on grass", 1.0)]),
        ("  a   dog\ton grass  ", [Term("a dog on grass", 1.0)]),
        ("beach -people", [Term("beach", 1.0), Term("people", -1.0)]),
        ("mountains +snow", [Term("mountains", 1.0), Term("snow", 1.0)]),
        ('"red car"^2 street', [Term("street", 1.0), Term("red car", 2.0)]),
        ('cat -"cat toy"^0.5', [Term("cat", 1.0), Term("cat toy", -0.5)]),
        ("dog^2.5 cat", [Term("cat", 1.0), Term("dog", 2.5)]),
        ('"a dog"', [Term("a dog", 1.0)]),
        ("+sunset -clouds +sea", [Term("sunset", 1.0), Term("clouds", -1.0), Term("sea", 1.0)]),
        ("x^1e1", [Term("x", 10.0)]),
        ("x^10", [Term("x", 10.0)]),
        ("café 犬 über", [Term("café 犬 über", 1.0)]),
    ],
)
def test_queries_parse_into_weighted_terms(query: str, terms: list[Term]) -> None:
    assert parse_query(query) == terms


def test_plain_words_around_operators_form_one_phrase() -> None:
    assert parse_query("a red -blue car") == [Term("a red car", 1.0), Term("blue", -1.0)]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "empty"),
        ("   \t ", "empty"),
        ("-people", "only subtracts"),
        ('-people -"a crowd"', "only subtracts"),
        ('""', "no terms"),
        ("dog^abc", "not a number"),
        ("dog^0", "between 0 and 10"),
        ("dog^-1", "between 0 and 10"),
        ("dog^10.5", "between 0 and 10"),
        ("dog^nan", "between 0 and 10"),
        ("dog^inf", "between 0 and 10"),
        ("x" * (MAX_QUERY_CHARS + 1), "longer than"),
        (" ".join(f"+t{i}" for i in range(MAX_TERMS + 1)), f"at most {MAX_TERMS}"),
    ],
)
@pytest.mark.parametrize("parameter", ["q", "query"])
def test_bad_queries_name_the_parameter(query: str, message: str, parameter: str) -> None:
    with pytest.raises(QueryError, match=message) as caught:
        parse_query(query, parameter)

    assert caught.value.parameter == parameter
    assert str(caught.value).startswith(f"{parameter}: ")


def test_the_limits_themselves_are_allowed() -> None:
    assert parse_query("x" * MAX_QUERY_CHARS) == [Term("x" * MAX_QUERY_CHARS, 1.0)]
    assert len(parse_query(" ".join(f"+t{i}" for i in range(MAX_TERMS)))) == MAX_TERMS


_WORD = st.text(
    alphabet=st.characters(whitelist_categories=("Ll", "Lu", "Nd"), max_codepoint=0x2FFF),
    min_size=1,
    max_size=8,
)


@given(st.lists(_WORD, min_size=1, max_size=12))
def test_plain_words_are_always_one_concept(words: list[str]) -> None:
    assert parse_query(" ".join(words)) == [Term(" ".join(words), 1.0)]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["", "+", "-"]),
            _WORD,
            st.sampled_from([None, 0.5, 2.0, 3.0]),
            st.booleans(),
        ),
        min_size=1,
        max_size=10,
    )
)
def test_parsed_terms_match_what_was_written(
    parts: list[tuple[str, str, float | None, bool]],
) -> None:
    tokens = []
    for sign, word, weight, quoted in parts:
        text = f'"{word} x"' if quoted else word
        tokens.append(f"{sign}{text}" + (f"^{weight}" if weight is not None else ""))
    query = " ".join(tokens)
    if all(sign == "-" for sign, *_ in parts):
        with pytest.raises(QueryError, match="only subtracts"):
            parse_query(query)
        return

    terms = parse_query(query)

    expected_concepts = sum(
        1 for sign, _, weight, quoted in parts if sign or weight is not None or quoted
    )
    plain = [word for sign, word, weight, quoted in parts if not (sign or weight or quoted)]
    assert len(terms) == expected_concepts + (1 if plain else 0)
    if plain:
        assert terms[0] == Term(" ".join(plain), 1.0)
    negative = sum(1 for sign, *_ in parts if sign == "-")
    assert sum(1 for term in terms if term.weight < 0) == negative
    assert any(term.weight > 0 for term in terms)
    assert all(0 < abs(term.weight) <= 10 for term in terms)


@given(st.text(max_size=200))
def test_any_text_parses_or_raises_a_query_error(text: str) -> None:
    try:
        terms = parse_query(text)
    except QueryError as exc:
        error = exc
    else:
        assert 1 <= len(terms) <= MAX_TERMS
        assert any(term.weight > 0 for term in terms)
        assert all(term.text.strip() for term in terms)
        return
    assert error.parameter == "q"
    assert str(error).startswith("q: ")
