"""``python -m helpers.manual_marks MARKS.csv --out grading``: written-answer marks into the grades and feedback.

The batch grader scores what a machine can and leaves the written answers to a person: it
writes ``<out>/manual_marks.csv`` with one row per answer waiting for a mark (student, lab,
grade_id, max_score, an empty ``score`` and ``comment``). Fill in the scores (and, if you
like, a comment for the student), then run this command. It

* checks every row (a known submission and answer, a number between 0 and the answer's points)
  and refuses the whole file, naming each bad row, rather than half-apply it;
* writes the marks into ``grades_by_cell.csv`` (the cell's ``score``; no longer waiting) and
  fills ``grades.csv``'s ``manual_score`` and ``total`` (automatic + manual) per student and lab;
* adds a "Written answers" table, with the comments, to each student's feedback page.

Run it again after changing marks: it starts from the marks file each time, so the result is
the same however often it runs. Rows left without a score stay waiting.
"""

from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path

from .batch_grading import read_csv, safe_id, write_csv

MARK_COLUMNS = ["student", "lab", "grade_id", "max_score", "score", "comment"]
FEEDBACK_MARK = "<!-- written-answer marks -->"


def _waiting(cell: dict) -> bool:
    return str(cell.get("needs_manual_grade")) in ("True", "true", "1")


def write_template(out: Path, cells: list[dict]) -> Path:
    """``<out>/manual_marks.csv``: a row for every answer waiting for a person, and every row an
    earlier file held (typed marks are never lost; a regraded submission keeps its old mark, so
    check its rows)."""
    path = Path(out) / "manual_marks.csv"
    typed = {(r["student"], r["lab"], r["grade_id"]): r for r in read_csv(path)} if path.is_file() else {}
    rows = []
    for c in cells:
        key = (c["student"], c["lab"], c["grade_id"])
        if not _waiting(c) and key not in typed:
            continue
        old = typed.get(key, {})
        rows.append({"student": c["student"], "lab": c["lab"], "grade_id": c["grade_id"],
                     "max_score": c["max_score"], "score": old.get("score", ""), "comment": old.get("comment", "")})
    write_csv(path, MARK_COLUMNS, sorted(rows, key=lambda r: (r["student"], r["lab"], r["grade_id"])))
    return path


def apply_marks(marks_path: Path, out: Path) -> dict:
    """Merge the marks into ``out``'s tables and feedback; return counts. ValueError names every bad row."""
    out = Path(out)
    grades_path, cells_path = out / "grades.csv", out / "grades_by_cell.csv"
    if not grades_path.is_file() or not cells_path.is_file():
        raise ValueError(f"{out} holds no grades.csv / grades_by_cell.csv: run the batch grader into it first")
    marks, cells, grades = read_csv(marks_path), read_csv(cells_path), read_csv(grades_path)
    missing = [c for c in ("student", "lab", "grade_id", "score") if marks and c not in marks[0]]
    if missing:
        raise ValueError(f"{marks_path} lacks the column(s) {', '.join(missing)} (expected {', '.join(MARK_COLUMNS)})")
    by_key = {(c["student"], c["lab"], c["grade_id"]): c for c in cells}
    problems, given = [], {}
    for line, row in enumerate(marks, start=2):
        key = (row["student"], row["lab"], row["grade_id"])
        text = (row.get("score") or "").strip()
        if not text:
            continue
        cell = by_key.get(key)
        if cell is None:
            problems.append(f"line {line}: no answer {row['grade_id']!r} of {row['student']!r} in {row['lab']!r}")
            continue
        try:
            score = float(text)
        except ValueError:
            problems.append(f"line {line}: score {text!r} is not a number")
            continue
        if not 0 <= score <= float(cell["max_score"]):
            problems.append(f"line {line}: score {score:g} is outside 0..{float(cell['max_score']):g}")
            continue
        given[key] = (score, (row.get("comment") or "").strip())
    if problems:
        raise ValueError(f"{marks_path}: nothing applied, fix these first:\n  " + "\n  ".join(problems))
    for key, (score, _) in given.items():
        by_key[key].update(score=score, needs_manual_grade=False)
    write_csv(cells_path, list(cells[0]) if cells else [], cells)
    columns = list(grades[0]) if grades else []
    per_submission: dict[tuple[str, str], list[dict]] = {}  # one pass, not one per grade row: a class is thousands
    for c in cells:
        per_submission.setdefault((c["student"], c["lab"]), []).append(c)
    for g in grades:
        theirs = per_submission.get((g["student"], g["lab"]), [])
        mine = [c for c in theirs if (c["student"], c["lab"], c["grade_id"]) in given]
        manual = sum(float(c["score"]) for c in mine)
        waiting = [c["grade_id"] for c in theirs if _waiting(c)]
        g["manual_score"] = round(manual, 3) if mine else ""
        g["total"] = round(float(g["auto_score"] or 0) + manual, 3) if g["status"] == "graded" else ""
        extra_flags = [w for w in g.get("needs_manual_grading", "").split() if w == "redefinitions"]
        g["needs_manual_grading"] = " ".join(waiting + extra_flags)
    write_csv(grades_path, columns, grades)
    pages = _feedback(out, given, by_key)
    return {"marks": len(given), "feedback pages": pages}


def _feedback(out: Path, given: dict, cells: dict) -> int:
    """Append (or replace) a table of written-answer marks at the end of each feedback page."""
    pages = {}
    for (student, lab, grade_id), (score, comment) in sorted(given.items()):
        pages.setdefault((student, lab), []).append((grade_id, score, float(cells[(student, lab, grade_id)]["max_score"]),
                                                     comment))
    written = 0
    for (student, lab), rows in pages.items():
        page = out / "feedback" / safe_id(student) / f"{lab}.html"
        if not page.is_file():
            continue
        text = page.read_text(encoding="utf-8").split(FEEDBACK_MARK)[0]
        table = "".join(f"<tr><td>{html.escape(g)}</td><td>{s:g} / {m:g}</td><td>{html.escape(c)}</td></tr>"
                        for g, s, m, c in rows)
        block = (f"{FEEDBACK_MARK}<section style='margin:2em'><h2>Written answers, graded by a person</h2>"
                 f"<table><tr><th>answer</th><th>points</th><th>comment</th></tr>{table}</table></section>")
        text = text.replace("</body>", block + "</body>") if "</body>" in text else text + block
        page.write_text(text, encoding="utf-8")
        written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.manual_marks", description=__doc__.split("\n\n")[0])
    parser.add_argument("marks", type=Path, help="the filled-in manual_marks.csv")
    parser.add_argument("--out", type=Path, default=Path("grading"),
                        help="the batch grader's output folder to update (default: grading)")
    args = parser.parse_args(argv)
    if not args.marks.is_file():
        parser.error(f"marks file {args.marks} does not exist")
    try:
        done = apply_marks(args.marks, args.out)
    except ValueError as exc:
        print(f"manual_marks: error: {exc}", file=sys.stderr)
        return 1
    print(f"applied {done['marks']} mark(s); {done['feedback pages']} feedback page(s) updated; "
          f"see {args.out / 'grades.csv'} (manual_score, total)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
