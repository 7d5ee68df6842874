"""Which numbers of an answer come from its sources (`chatforge.agent.grounding`)."""

from chatforge.agent.grounding import numbers_in, ungrounded_numbers


def test_numbers_are_read_with_separators_and_next_to_chinese_text():
    assert numbers_in("结果是1,825。约 2.27 千克，-5 度") == ["1825", "2.27", "-5"]


def test_identifiers_and_list_markers_are_not_numbers():
    assert numbers_in("1. use utf8 and x2\n2) then 42") == ["42"]


def test_a_number_from_a_source_is_grounded_exactly_or_rounded():
    sources = ["What is 5 pounds in kg?", '{"result": 2.2679618500000003}']
    assert ungrounded_numbers("5 pounds is 2.27 kg (about 2.268).", sources) == []
    assert ungrounded_numbers("5 pounds is 2.5 kg.", sources) == ["2.5"]


def test_a_made_up_result_is_reported_once_in_order():
    assert ungrounded_numbers("37 × 49 + 12 = 1763, so 1763.", ["37 * 49 + 12", "1825"]) == ["1763"]


def test_the_parts_of_a_date_are_numbers_too():
    assert ungrounded_numbers("2024年3月20日", ["从2024年3月1日起往后100天"]) == ["20"]


def test_an_answer_without_numbers_is_grounded():
    assert ungrounded_numbers("It is sunny.", []) == []
