from sdlab.tokenizer import VOCAB_SIZE, load_clip_tokenizer


def test_known_ids():
    tok = load_clip_tokenizer()
    ids = tok("a photograph of an astronaut riding a horse").input_ids
    assert ids == [49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407]


def test_vocab_and_length():
    tok = load_clip_tokenizer()
    assert len(tok) == VOCAB_SIZE == 49408
    assert tok.model_max_length == 77
    padded = tok("a red circle", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[-1] == 49407


def test_lowercase_and_unicode():
    tok = load_clip_tokenizer()
    assert tok("A RED Circle").input_ids == tok("a red circle").input_ids
    assert tok.decode(tok("a café").input_ids, skip_special_tokens=True).strip() == "a café"
