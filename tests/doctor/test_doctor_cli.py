"""`python -m lib doctor`: one JSON object with the findings, exit codes as for scan, --apply and
--undo changing only the app's decisions (never the folder)."""

from __future__ import annotations

import json

from lib import cli
from lib.data import curation
from lib.data.scan import scan
from tests.doctor.conftest import flipped_paths, folder_hash


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_doctor_json_apply_and_undo(planted, doctor_env, capsys, tmp_path):
    before = folder_hash(planted)
    code, out, _ = _run(capsys, "doctor", str(planted), "--json", "--weights", "bundled")
    assert code == 0
    found = json.loads(out.strip().splitlines()[-1])
    assert len(out.strip().splitlines()) == 1, "--json prints one object"
    first = found["label_issues"][0]
    assert set(first) >= {"path", "given", "suggested", "score"}
    assert set(found["near_duplicates"][0]) >= {"a", "b", "similarity", "kind"}
    assert set(found["outliers"][0]) >= {"path", "score"}
    assert flipped_paths() <= {r["path"] for r in found["label_issues"]}

    code, out, _ = _run(capsys, "doctor", str(planted), "--weights", "bundled", "--limit", "3")
    assert code == 0 and "Suspect labels" in out and "Near-duplicates" in out
    assert json.loads(out.strip().splitlines()[-1])["label_issues"] == len(found["label_issues"])

    decisions = tmp_path / "fix.csv"
    decisions.write_text(
        "path,action,label\ntrain/bean_rust/00728.jpg,relabel,healthy\ntrain/healthy/00383.jpg,exclude,\n"
    )
    code, out, _ = _run(capsys, "doctor", str(planted), "--apply", str(decisions))
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["changed"] == 2
    curated = scan(planted).manifest.set_index("relpath")
    assert curated.at["train/bean_rust/00728.jpg", "class"] == "healthy"
    assert not curated.at["train/healthy/00383.jpg", "usable"]
    assert folder_hash(planted) == before, "decisions never touch the user's files"

    code, out, _ = _run(capsys, "doctor", str(planted), "--undo", "--json")
    assert code == 0 and json.loads(out)["changed"] == 2
    assert curation.decisions(planted) == {}
    assert folder_hash(planted) == before


def test_doctor_bad_input_exits_2_with_one_line(planted, doctor_env, capsys, tmp_path):
    code, _, err = _run(capsys, "doctor", str(tmp_path / "missing"))
    assert code == 2 and err.startswith("error: Folder not found")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,action,label\nnot/there.jpg,exclude,\n")
    code, _, err = _run(capsys, "doctor", str(planted), "--apply", str(bad))
    assert code == 2 and "not a usable image" in err and len(err.strip().splitlines()) == 1
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("path,action,label\ntrain/healthy/00773.jpg,relabel,cactus\n")
    code, _, err = _run(capsys, "doctor", str(planted), "--apply", str(wrong))
    assert code == 2 and "cactus" in err
    assert curation.decisions(planted) == {}
