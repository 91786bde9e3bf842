from transformers import CLIPTokenizer

from modelseal.models.tokenizer import BOS, EOS, WORDS, build_tokenizer


def test_listed_words_are_single_tokens_and_eos_is_highest(tmp_path):
    tok = build_tokenizer()
    assert tok.convert_tokens_to_ids(EOS) == len(tok) - 1
    assert tok.convert_tokens_to_ids(BOS) == len(tok) - 2
    for w in WORDS:
        ids = tok(w)["input_ids"]
        assert len(ids) == 3, (w, tok.convert_ids_to_tokens(ids))


def test_unknown_text_falls_back_to_bytes_and_round_trips(tmp_path):
    tok = build_tokenizer()
    tok.save_pretrained(str(tmp_path))
    again = CLIPTokenizer.from_pretrained(str(tmp_path))
    text = "*[z]& a photo of qwx dog"
    ids = again(text)["input_ids"]
    assert ids == tok(text)["input_ids"]
    assert again.decode(ids, skip_special_tokens=True).replace(" ", "") == text.replace(" ", "")
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
