"""`chatforge learn`'s Chinese names on the real default model: the model cannot translate
an invented name, so it is built word by word (naming.py). Marked ``integration``."""

import pytest

from chatforge.models.embedded import EmbeddedModelError

pytestmark = pytest.mark.integration


def test_an_invented_english_name_gets_the_chinese_name_a_reader_would_use():
    from chatforge.models.loader import load_weights, resolve
    from chatforge.templates import get_template
    from chatforge.train.learn.derive import translate_subjects
    from chatforge.train.learn.naming import chinese_names

    try:
        model, tokenizer = load_weights(resolve("default"), device="cpu", dtype="float32")
    except EmbeddedModelError as err:
        pytest.skip(f"embedded default model not installed: {err}")
    template = get_template("auto", tokenizer)
    subjects = ["the Zorvian Institute of Cartography", "the mayor of Quillhaven", "the Harlow-9 rocket",
                "The Silent Orchard", "the Royal Society"]  # fmt: skip
    # Asked plainly, the model names the institute something else, which is not used ...
    assert "the Zorvian Institute of Cartography" not in translate_subjects(model.eval(), template, subjects[:1])
    # ... so it is built: the invented word by sound, the others translated, "of" first.
    names = chinese_names(model, template, [s.removeprefix("the ") for s in subjects])
    assert names["Zorvian Institute of Cartography"] == "佐维安地图研究所"
    assert names["mayor of Quillhaven"] == "奎尔哈文市长"
    assert names["Harlow-9 rocket"] == "哈洛-9火箭"
    # Known words only: nothing invented to write by sound, so nothing is built.
    assert "The Silent Orchard" not in names and "Royal Society" not in names
