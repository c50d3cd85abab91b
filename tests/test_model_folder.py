"""fewstep.model_folder: the card every export writes and `--model PATH` reads."""

from __future__ import annotations

import hashlib
import json

import pytest

import fewstep
from fewstep.errors import FewstepError
from fewstep.model_folder import MODEL_CARD, load_folder, read_card, write_model_folder


def test_card_records_sha256_and_refuses_missing_files(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"weights" * 1000)
    path = write_model_folder(tmp_path, {"type": "sr3", "name": "x"}, ["w.bin"])
    card = json.loads(path.read_text())
    assert card == {"type": "sr3", "name": "x", "sha256": {"w.bin": hashlib.sha256(b"weights" * 1000).hexdigest()}}
    assert read_card(tmp_path) == card and not (tmp_path / (MODEL_CARD + ".tmp")).exists()
    with pytest.raises(FewstepError, match="missing other.bin"):
        write_model_folder(tmp_path, {"type": "sr3"}, ["w.bin", "other.bin"])


def test_folder_errors_are_one_line(tmp_path):
    with pytest.raises(FewstepError, match="not a fewstep model folder"):
        load_folder(tmp_path)
    (tmp_path / MODEL_CARD).write_text("{not json")
    with pytest.raises(FewstepError, match=r"fewstep_model\.json: invalid model card"):
        fewstep.load(str(tmp_path))
    (tmp_path / MODEL_CARD).write_text(json.dumps({"type": "gan"}))
    with pytest.raises(FewstepError, match=r"model type 'gan' is not one of resshift, sr3"):
        fewstep.load(str(tmp_path))
