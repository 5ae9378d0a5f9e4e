"""Synthetic scanned patents with questions, in the CCKS 2025 layout.

    python -m patentqa.data.synth out_dir=data/synth n_docs=50 seed=0 [scan_dpi=300 ...]

Each patent is drawn page by page (front page with abstract, claims, description naming
numbered parts, figure pages where every part is a shape with a leader line to its number),
rasterised to a grayscale JPEG scan and saved as an image-only PDF. Questions use the
real round-B phrasings; answers and evidence pages come from the generator's ground truth,
written to ``{split}/truth/<stem>.json`` (coordinates in PDF points, origin top-left).
The same spec gives byte-identical files.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import random
import re
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from patentqa.cpus import pool_size
from patentqa.data.synth import vocab as V
from patentqa.data.synth.choices import to_choice
from patentqa.data.synth.questions import (KINDS, document_candidates, figure_other_candidates, pick_questions,
                                           plain, position_candidates)
from patentqa.data.synth.render import (FIGURE_REGIONS, assign_figures, front_lines, layout_figure, line_boxes,
                                        render_pdf, wrap)
from patentqa.data.synth.vocab import Part
from patentqa.tracking import atomic_write

LINES_PER_PAGE = 35


@dataclass
class SynthSpec:
    """What to generate; every field is a CLI key."""

    n_docs: int = 20
    seed: int = 0
    test_ratio: float = 0.2           # share of documents in the test split
    scan_dpi: int = 100               # scan resolution; 300 = realistic A4 scans, ~6x slower
    jpeg_quality: int = 75            # scan JPEG quality; higher = larger PDFs
    questions_per_doc: int = 6
    position_share: float = 0.28      # figure_position questions (real round B: 166/600)
    figure_other_share: float = 0.46  # other figure-page questions; the rest are whole-patent
    rounds: list[str] = field(default_factory=lambda: ["b"])  # b: open answers; a: 4-way choice; [a, b]: alternate
    workers: int = 0                  # document processes; 0 = one per CPU this job may use (patentqa/cpus.py)


def dumps(obj: Any) -> str:
    """Byte-stable JSON: sorted keys, real CJK characters."""
    return json.dumps(obj, ensure_ascii=False, sort_keys=True)


# ---------------------------------------------------------------- the patent's content
def choose_parts(rng: random.Random) -> list[Part]:
    """6-18 parts; part 1 carries the rest; numbering 1..n or with sub-parts (21, 22...)."""
    n = rng.randint(6, 18)
    base = rng.choice(V.BASE_PARTS)
    vocab = rng.sample([p for p in V.PARTS if p[0] != base], n - 1)
    root = Part(1, base, dict(V.PARTS)[base])
    if rng.random() < 0.7:
        parts = [root] + [Part(i + 2, *v) for i, v in enumerate(vocab)]
        for p in parts[1:]:
            p.carrier = 1 if rng.random() < 0.4 else rng.randint(1, p.number - 1)
    else:
        top = max(3, n // 2)
        parts = [root] + [Part(i + 2, *v, carrier=1) for i, v in enumerate(vocab[: top - 1])]
        for i, v in enumerate(vocab[top - 1:]):
            carrier = parts[1 + i % (top - 1)].number
            used = sum(1 for p in parts if p.carrier == carrier and p.number > 10)
            parts.append(Part(carrier * 10 + used + 1, *v, carrier=carrier))
    names = {p.number: f"{p.name}{p.number}" for p in parts}
    for p in parts[1:]:
        sentence, p.joint_answer = rng.choice(V.JOINTS)
        p.joint = f"{names[p.number]}{sentence.format(p=names[p.carrier])}"
    return parts


def make_patent(rng: random.Random, stem: str) -> dict[str, Any]:
    """Title, purpose, problem, parts and bibliographic data of one patent."""
    obj, verb = rng.choice(V.OBJECTS), rng.choice(V.VERBS)
    device = verb + rng.choice(V.DEVICE_SUFFIXES)
    short = obj + device
    title = rng.choice([f"一种{short}", f"一种用于{obj}加工的{device}", f"一种{obj}用{device}"])
    parts = choose_parts(rng)
    top = [p.name for p in parts if p.carrier in (None, 1)][: rng.randint(3, 4)]
    year = rng.randint(2019, 2023)
    return {
        "stem": stem, "title": title, "short": short, "device": device, "obj": obj, "verb": verb,
        "purpose": f"用于对{obj}进行{verb}", "issue": rng.choice(V.ISSUES),
        "benefit": rng.choice(V.BENEFITS), "field": f"{obj}{verb}设备技术领域",
        "components": "、".join(top[:-1]) + "和" + top[-1], "parts": parts,
        "applicant": rng.choice(V.CITIES) + rng.choice(V.FIRMS) + rng.choice(V.FIRM_TYPES) + "有限公司",
        "inventors": "；".join(rng.choice(V.SURNAMES) + "".join(rng.sample(V.GIVEN, rng.randint(1, 2)))
                              for _ in range(rng.randint(1, 4))),
        "filed": f"{year}.{rng.randint(1, 12):02d}.{rng.randint(1, 28):02d}",
        "granted": f"{year + 1}.{rng.randint(1, 12):02d}.{rng.randint(1, 28):02d}",
        "app_no": f"{year}2{rng.randint(10**6, 10**7 - 1)}.{rng.randint(0, 9)}",
        "ipc": rng.choice(V.IPC), "list_style": rng.choice(["、", "-"]),
    }


def part_sentence(p: Part) -> str:
    """"所述电机2与机架1固定连接，电机2用于…。": how the description introduces a part."""
    joint = f"{p.joint}，" if p.joint else ""
    return f"所述{joint}{p.name}{p.number}用于{p.function}。"


def claims_lines(rng: random.Random, pat: dict[str, Any]) -> list[str]:
    """Claim 1 lists the parts with their joints; dependent claims give functions."""
    parts = pat["parts"]
    ref = {p.number: f"{p.name}({p.number})" for p in parts}
    joints = "；".join(re.sub(r"(?<=[\u4e00-\u9fff])(\d+)", r"(\1)", p.joint) for p in parts[1:])
    claims = [f"{pat['title']}，其特征在于：包括{'、'.join(ref[p.number] for p in parts)}，所述{joints}。"]
    for p in rng.sample(parts, min(len(parts), rng.randint(2, 14))):
        claims.append(f"根据权利要求{rng.randint(1, len(claims))}所述的{pat['short']}，"
                      f"其特征在于：所述{ref[p.number]}用于{p.function}。")
    lines = [line for i, c in enumerate(claims) for line in wrap(f"{i + 1}.{c}")]
    return lines[: 2 * LINES_PER_PAGE]


def description_lines(rng: random.Random, pat: dict[str, Any], views: list[str], min_lines: int) -> list[str]:
    """技术领域 … 具体实施方式 and the reference signs, padded with embodiment text to ``min_lines``."""
    fill, parts = {"obj": pat["obj"], "verb": pat["verb"]}, pat["parts"]
    head = [("h", "技术领域"), ("p", f"本实用新型涉及{pat['field']}，具体为{pat['title']}。"),
            ("h", "背景技术"), ("p", rng.choice(V.BACKGROUND_FILLER).format(**fill)),
            ("p", f"现有的{pat['device']}在使用时存在{pat['issue']}的问题，难以满足实际生产的需要。"),
            ("h", "实用新型内容"),
            ("p", f"本实用新型的目的在于提供{pat['title']}，以解决上述背景技术中提出的{pat['issue']}的问题。"),
            ("p", f"为实现上述目的，本实用新型提供如下技术方案：{pat['title']}，包括{pat['components']}。"),
            ("p", f"与现有技术相比，本实用新型的有益效果是：本实用新型{pat['purpose']}，{pat['benefit']}。"),
            ("h", "附图说明")] + [("p", f"图{i + 1}为本实用新型的{v}；") for i, v in enumerate(views)]
    body = [("h", "具体实施方式"), ("p", V.EMBODIMENT_FILLER[0])]
    cuts = sorted(rng.sample(range(1, len(parts)), min(len(parts) - 1, len(parts) // 2)))
    body += [("p", "".join(part_sentence(p) for p in parts[a:b])) for a, b in zip([0] + cuts, cuts + [None])]
    steps = "，".join(f"{p.name}{p.number}{p.function}" for p in rng.sample(parts[1:], min(3, len(parts) - 1)))
    body.append(("p", f"工作原理：使用时，将{pat['obj']}放置于{parts[0].name}1上，{steps}，"
                      f"从而完成{pat['obj']}的{pat['verb']}。"))
    entries = "；".join(f"{p.number}{pat['list_style']}{p.name}" for p in parts)
    tail = [("p", f"附图标记说明：{entries}。")]
    extra = [t.format(**fill) for t in rng.sample(V.EMBODIMENT_FILLER[1:], len(V.EMBODIMENT_FILLER) - 1)]
    while sum(map(block_lines, head + body + tail)) < min_lines:
        p = rng.choice(parts)
        body.append(("p", extra.pop() if extra else
                     f"实施例{len(body)}：本实施例与实施例1的结构基本相同，不同之处在于：所述{p.name}{p.number}"
                     f"采用{rng.choice(V.MATERIALS)}制成，进一步延长了{p.name}{p.number}的使用寿命。"))
    lines, n = [], 0
    for style, text in head + body + tail:
        n += style == "p"
        lines += [text] if style == "h" else wrap(f"[{n:04d}] {text}")
    return lines


def block_lines(block: tuple[str, str]) -> int:
    """Lines a heading ("h") or a numbered paragraph ("p") takes on a page."""
    return 1 if block[0] == "h" else len(wrap("[0000] " + block[1]))


def paginate(lines: list[str], per_page: int) -> list[list[str]]:
    """Cut lines into pages of ``per_page``; at least one (possibly empty) page."""
    return [lines[i:i + per_page] for i in range(0, len(lines), per_page)] or [[]]


# ---------------------------------------------------------------- page plan
def plan_pages(rng: random.Random, pat: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """Front page, claims, description and figure pages (4-12 in all) with their content."""
    parts = pat["parts"]
    per_page = assign_figures(rng, parts, rng.choice([1, 1, 2, 2, 2, 3, 3, 4, 4]))
    n_figs = sum(len(figs) for figs in per_page)
    views = ["结构示意图"] + [rng.choice(V.VIEWS) for _ in range(n_figs - 1)]
    claims = paginate(claims_lines(rng, pat), LINES_PER_PAGE)
    lines_per_page = rng.randint(LINES_PER_PAGE - 7, LINES_PER_PAGE)
    n_desc = rng.randint(1, max(1, min(6, 11 - len(claims) - len(per_page))))
    desc = description_lines(rng, pat, views, (n_desc - 1) * lines_per_page + rng.randint(8, lines_per_page))
    desc_pages = paginate(desc, lines_per_page)
    abstract = (f"本实用新型公开了{pat['title']}，包括{pat['components']}。{part_sentence(parts[1])}"
                f"本实用新型{pat['purpose']}，{pat['benefit']}，解决了现有{pat['device']}{pat['issue']}的问题。")
    draw = front_lines(pat, abstract)
    pages = [{"role": "abstract", "draw": draw, "lines": [t for *_, t in draw]}]
    pages += [{"role": "claims", "lines": lines} for lines in claims]
    pages += [{"role": "description", "lines": lines} for lines in desc_pages]
    figures: list[dict] = []
    for figs in per_page:
        pages.append({"role": "figure", "lines": []})
        for region, numbers in zip(FIGURE_REGIONS[len(figs)], figs):
            drawn = layout_figure(rng, region, numbers)
            carriers = {p.number: p.carrier for p in parts}
            figures.append({"page": len(pages), "figure": len(figures) + 1, "view": views[len(figures)],
                            "region": list(region), "parts": drawn,
                            "links": [[n, carriers[n]] for n in numbers if carriers[n] in numbers]})
    for i, page in enumerate(pages):
        page["page"] = i + 1
    assert 4 <= len(pages) <= 12, len(pages)
    return pages, figures


def names_on(page: dict, parts: list[Part]) -> list[int]:
    """Numbers of the parts a text page names ("电机2", "电机(2)", "2、电机", "2-电机")."""
    text = plain(page)
    return [p.number for p in parts
            if re.search(rf"{p.name}{p.number}(?!\d)|(?<!\d){p.number}[、-]{p.name}", text)]


# ---------------------------------------------------------------- documents and splits
def doc_stem(spec: SynthSpec, index: int) -> str:
    """A CN utility-model number, unique per index (104729 is prime, so index -> digits is 1:1)."""
    return f"CN2{(spec.seed * 7919 + index * 104729 + 12345) % 10**8:08d}U"


def question_id(spec: SynthSpec, stem: str, index: int) -> str:
    """Stable id: a short hash of seed, document and question index."""
    return hashlib.sha1(f"{spec.seed}:{stem}:{index}".encode()).hexdigest()[:12]


def build_document(job: tuple[SynthSpec, int, str, Path]) -> tuple[list[dict], int]:
    """Make one patent: write its PDF and truth, return its question rows and page count."""
    spec, index, split, out = job
    rng = random.Random(f"patentqa-synth:{spec.seed}:{index}")
    stem = doc_stem(spec, index)
    pat = make_patent(rng, stem)
    pages, figures = plan_pages(rng, pat)
    names = {p.number: p.name for p in pat["parts"]}
    pools = {"figure_position": [c for f in figures for c in position_candidates(rng, f, names)],
             "figure_other": [c for f in figures for c in figure_other_candidates(rng, f, pat, pages)],
             "document": document_candidates(rng, pat, pages)}
    rows, asked = [], []
    shares = (spec.position_share, spec.figure_other_share, 1 - spec.position_share - spec.figure_other_share)
    choice_rng = random.Random(f"patentqa-choices:{spec.seed}:{index}")  # round A draws apart: B sets stay as they were
    for i, c in enumerate(pick_questions(rng, pools, shares, spec.questions_per_doc)):
        qid = question_id(spec, stem, i)
        row = {"id": qid, "question": c["question"], "document": f"{stem}.pdf", "answer": c["answer"],
               "kind": c["kind"], "evidence_pages": c["evidence_pages"]}
        if spec.rounds[i % len(spec.rounds)] == "a":
            drawn = next((f["parts"] for f in figures if f["page"] in c["evidence_pages"]), [])
            slot = (index * spec.questions_per_doc + i) // len(spec.rounds)  # counts round-A questions: letters cycle
            choice = to_choice(choice_rng, c, pat, [d["number"] for d in drawn], slot)
            if choice is not None:
                row["options"], row["answer"] = choice
        rows.append(row)
        asked.append({"id": qid, "kind": c["kind"], "template": c["template"], "parts": c["parts"],
                      "answer_text": c["answer"]})
    truth = {"document": f"{stem}.pdf", "split": split, "n_pages": len(pages),
             "coordinates": "PDF points on a 595x842 page, origin top-left, y downwards",
             **{k: pat[k] for k in ("title", "short", "purpose", "issue", "benefit", "field", "components")},
             "pages": [{"page": p["page"], "role": p["role"], "text": "\n".join(p["lines"]), "line_boxes": line_boxes(p),
                        "parts": names_on(p, pat["parts"]),
                        "figures": [f["figure"] for f in figures if f["page"] == p["page"]]} for p in pages],
             "parts": [asdict(p) for p in pat["parts"]], "figures": figures, "questions": asked}
    folder = out / split
    pdf = render_pdf(stem, pages, figures, spec.scan_dpi, spec.jpeg_quality)
    atomic_write(folder / "documents" / f"{stem}.pdf", pdf)
    atomic_write(folder / "truth" / f"{stem}.json", (dumps(truth) + "\n").encode())
    return rows, len(pages)


def assign_splits(spec: SynthSpec) -> list[str]:
    """train/test per document; at least one of each when there are two or more documents."""
    n_test = round(spec.n_docs * spec.test_ratio)
    if spec.n_docs >= 2 and 0 < spec.test_ratio < 1:
        n_test = min(spec.n_docs - 1, max(1, n_test))
    test = set(random.Random(f"patentqa-split:{spec.seed}").sample(range(spec.n_docs), n_test))
    return ["test" if i in test else "train" for i in range(spec.n_docs)]


def validate(spec: SynthSpec) -> None:
    """Raise ValueError naming every out-of-range setting."""
    problems = [msg for bad, msg in [
        (spec.n_docs < 1, "n_docs must be >= 1"), (not 0 <= spec.test_ratio <= 1, "test_ratio must be in [0, 1]"),
        (not 36 <= spec.scan_dpi <= 600, "scan_dpi must be in [36, 600]"),
        (not 1 <= spec.jpeg_quality <= 100, "jpeg_quality must be in [1, 100]"),
        (spec.questions_per_doc < 1, "questions_per_doc must be >= 1"), (spec.workers < 0, "workers must be >= 0"),
        (not spec.rounds or not set(spec.rounds) <= {"a", "b"}, "rounds must be a non-empty list of a and b"),
        (min(spec.position_share, spec.figure_other_share) < 0
         or spec.position_share + spec.figure_other_share > 1, "shares must be >= 0 and sum to <= 1")] if bad]
    if problems:
        raise ValueError("; ".join(problems))


def prepare_out_dir(out: Path) -> None:
    """Create the layout; refuse a non-empty folder that is not a synthetic set, clear an old one."""
    if out.exists() and any(out.iterdir()) and not (out / "synth.json").exists():
        raise FileExistsError(f"{out} is not empty and holds no synth.json; not writing into it")
    for split in ("train", "test"):
        for sub in ("documents", "truth"):
            folder = out / split / sub
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.glob("*.pdf" if sub == "documents" else "*.json"):
                old.unlink()


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write(path, "".join(dumps(r) + "\n" for r in rows).encode())


def generate(out_dir: str | Path, spec: SynthSpec) -> dict:
    """Write a synthetic CCKS-layout set under ``out_dir``; return its counts."""
    validate(spec)
    out = Path(out_dir).resolve()
    prepare_out_dir(out)
    splits = assign_splits(spec)
    jobs = [(spec, i, splits[i], out) for i in range(spec.n_docs)]
    workers = pool_size(spec.workers, spec.n_docs)
    # forkserver: safe even when the caller already runs threads (torch); scripts need the usual __main__ guard
    with multiprocessing.get_context("forkserver").Pool(workers) if workers > 1 else nullcontext() as pool:
        made = pool.imap(build_document, jobs) if pool else map(build_document, jobs)
        results = list(tqdm(made, total=spec.n_docs, desc="synthetic patents", unit="doc"))
    rows = {s: [r for (doc_rows, _), split in zip(results, splits) if split == s for r in doc_rows]
            for s in ("train", "test")}
    write_jsonl(out / "train" / "train.jsonl", rows["train"])
    write_jsonl(out / "test" / "test.jsonl", [{k: r[k] for k in ("id", "question", "document", "options") if k in r}
                                              for r in rows["test"]])
    write_jsonl(out / "test" / "test_gold.jsonl",
                [{k: r[k] for k in ("id", "answer", "kind", "evidence_pages")} for r in rows["test"]])
    every = rows["train"] + rows["test"]
    counts = {"documents": {s: splits.count(s) for s in ("train", "test")},
              "questions": {s: len(rows[s]) for s in ("train", "test")},
              "kinds": {k: sum(r["kind"] == k for r in every) for k in KINDS},
              "pages": sum(n for _, n in results)}
    recorded = {k: v for k, v in asdict(spec).items() if k != "workers"}  # workers never change the output
    atomic_write(out / "synth.json", (dumps({"spec": recorded, "counts": counts}) + "\n").encode())
    return counts
