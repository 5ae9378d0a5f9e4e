"""GME embeddings (tiny random embedder on CPU), retrievers, recall and style examples."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patentqa.data.corpus import Document, Question, read_split
from patentqa.data.embed import GmeEmbedder, gme_prompt, model_key
from patentqa.data.pages import RenderSpec, render_documents
from patentqa.data.questions import parse_question
from patentqa.data.retrieval import (GmeRetriever, NoRetriever, OracleRetriever, lexical_embed, make_retriever,
                                     recall_at_k, recall_report, style_examples)

QUERY_INSTRUCTION = "Find an image that matches the given text."
BUDGET = {"min_pixels": 16 * 28 * 28, "max_pixels": 64 * 28 * 28}  # CPU-friendly: <= 64 image tokens


def make_embedder(model: Path, cache: Path, **overrides) -> GmeEmbedder:
    options = dict(BUDGET, query_instruction=QUERY_INSTRUCTION, batch_size=4, progress=False)
    options.update(overrides)
    return GmeEmbedder(model, cache, **options)


@pytest.fixture(scope="module")
def corpus(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """(train questions, documents, page paths) of the synthetic set, pages rendered small."""
    data = read_split(synth_dir, "train", strict=True)
    spec = RenderSpec(max_pixels=50176, min_pixels=3136)
    rendered = render_documents(list(data.documents.values()), tmp_path_factory.mktemp("pages"), spec,
                                workers=2, progress=False)
    assert not rendered.problems
    return data.questions, data.documents, rendered.paths


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Random images of different sizes (different token counts force padding in a batch)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for index, (height, width) in enumerate([(300, 200), (560, 392), (140, 140), (700, 500), (250, 600)]):
        path = folder / f"img{index}.png"
        Image.fromarray((rng.random((height, width, 3)) * 255).astype("uint8")).save(path)
        paths.append(path)
    return paths


QUERIES = ["部件5位于哪一侧？", "该专利要解决的技术问题是什么？请简要回答这个比较长的问题。", "图1", "x"]


def test_prompt_is_gme_format() -> None:
    assert gme_prompt("You are a helpful assistant.", "", image=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n<|im_start|>assistant\n<|endoftext|>")
    assert gme_prompt(QUERY_INSTRUCTION, "问题") == (
        f"<|im_start|>system\n{QUERY_INSTRUCTION}<|im_end|>\n<|im_start|>user\n问题<|im_end|>\n"
        "<|im_start|>assistant\n<|endoftext|>")


def test_shapes_unit_norm_and_same_image(tiny_embedder: Path, images: list[Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy.png"
    shutil.copy(images[1], copy)
    embedder = make_embedder(tiny_embedder, tmp_path / "cache")
    pages = embedder.embed_pages([images[0], images[1], copy])
    queries = embedder.embed_queries(QUERIES)
    assert pages.shape == (3, 64) and queries.shape == (4, 64) and pages.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(pages, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(pages[1], pages[2])
    assert embedder.computed == 2 + 4  # the copy has the same content: embedded once
    fresh = make_embedder(tiny_embedder, tmp_path / "other-cache", batch_size=1)
    np.testing.assert_allclose(fresh.embed_pages([copy])[0], pages[1], atol=1e-5)


def test_second_call_computes_nothing(tiny_embedder: Path, images: list[Path], tmp_path: Path) -> None:
    first = make_embedder(tiny_embedder, tmp_path)
    pages, queries = first.embed_pages(images), first.embed_queries(QUERIES)
    assert first.forward_calls > 0
    second = make_embedder(tiny_embedder, tmp_path)
    again_pages, again_queries = second.embed_pages(images), second.embed_queries(QUERIES)
    assert second.forward_calls == 0 and second._model is None  # nothing computed, model never loaded
    np.testing.assert_array_equal(pages, again_pages)
    np.testing.assert_array_equal(queries, again_queries)
    files = sorted(p.relative_to(tmp_path).parts[1] for p in tmp_path.rglob("*.npy"))
    assert files.count("pages") == len(images) and files.count("queries") == len(QUERIES)
    assert not list(tmp_path.rglob(".tmp-*"))
    # the pixel budget and the instruction are part of the key
    budget = make_embedder(tiny_embedder, tmp_path, max_pixels=32 * 28 * 28)
    budget.embed_pages(images[:1])
    assert budget.computed == 1
    instructed = make_embedder(tiny_embedder, tmp_path, query_instruction="Find a page.")
    instructed.embed_queries(QUERIES[:1])
    assert instructed.computed == 1


@pytest.mark.parametrize("positions", ["sequential", "mrope"])
def test_batch_equals_one_at_a_time(tiny_embedder: Path, images: list[Path], tmp_path: Path, positions: str) -> None:
    batched = make_embedder(tiny_embedder, tmp_path / "b", batch_size=8, positions=positions)
    single = make_embedder(tiny_embedder, tmp_path / "s", batch_size=1, positions=positions)
    np.testing.assert_allclose(batched.embed_pages(images), single.embed_pages(images), atol=1e-4)
    np.testing.assert_allclose(batched.embed_queries(QUERIES), single.embed_queries(QUERIES), atol=1e-4)
    assert batched.forward_calls == 2 and single.forward_calls == len(images) + len(QUERIES)


def test_left_padding_gives_the_same_embeddings(tiny_embedder: Path, tmp_path: Path) -> None:
    right = make_embedder(tiny_embedder, tmp_path / "r", batch_size=8)
    left = make_embedder(tiny_embedder, tmp_path / "l", batch_size=8)
    left._load()
    left._processor.tokenizer.padding_side = "left"
    np.testing.assert_allclose(left.embed_queries(QUERIES), right.embed_queries(QUERIES), atol=1e-4)


def test_gme_checkpoint_layout_loads(tiny_embedder: Path, images: list[Path], tmp_path: Path) -> None:
    """GME's checkpoint has visual.* / model.* and no lm_head: it must load to the same weights."""
    from safetensors.torch import load_file, save_file

    gme_dir = tmp_path / "gme-layout"
    shutil.copytree(tiny_embedder, gme_dir)
    weights = load_file(gme_dir / "model.safetensors")
    assert any(k.startswith("visual.") for k in weights) and any(k.startswith("model.layers.") for k in weights)
    save_file({k: v for k, v in weights.items() if not k.startswith("lm_head")}, gme_dir / "model.safetensors",
              metadata={"format": "pt"})
    assert model_key(gme_dir) != model_key(tiny_embedder)  # different weight file size
    assert model_key("Alibaba-NLP/gme-Qwen2-VL-7B-Instruct") != model_key("Alibaba-NLP/gme-Qwen2-VL-2B-Instruct")
    ours = make_embedder(gme_dir, tmp_path / "a").embed_pages(images[:2])
    reference = make_embedder(tiny_embedder, tmp_path / "b").embed_pages(images[:2])
    np.testing.assert_allclose(ours, reference, atol=1e-6)


def _check_context(pages: list[int], question: Question, document: Document, k: int) -> None:
    asked = parse_question(question.question).page
    assert pages == sorted(set(pages)), pages
    assert asked not in pages
    assert len(pages) <= k
    assert all(1 <= p <= document.page_count for p in pages)


@pytest.fixture(scope="module")
def gme_retriever(corpus, tiny_embedder: Path, tmp_path_factory: pytest.TempPathFactory) -> GmeRetriever:
    questions, documents, pages = corpus
    cfg = {"name": "gme", "k": 2, "model_path": str(tiny_embedder), **BUDGET, "batch_size": 8,
           "query_instruction": QUERY_INSTRUCTION, "document_instruction": "You are a helpful assistant."}
    retriever = make_retriever(cfg, pages, tmp_path_factory.mktemp("embeddings"))
    assert isinstance(retriever, GmeRetriever)
    retriever.embedder.progress = False
    started = time.perf_counter()
    retriever.prepare(questions, documents)
    seconds = time.perf_counter() - started
    n_pages = sum(d.page_count for d in documents.values())
    print(f"\ngme prepare: {n_pages} pages + {len(questions)} questions in {seconds:.2f}s "
          f"(pages {retriever.embedder.last_rate:.1f}/s on CPU, tiny embedder)")
    return retriever


def test_context_pages_invariants(corpus, gme_retriever: GmeRetriever) -> None:
    questions, documents, pages = corpus
    forward_calls = gme_retriever.embedder.forward_calls
    for retriever in (NoRetriever(2, pages), OracleRetriever(2, pages), gme_retriever,
                      NoRetriever(0, pages), OracleRetriever(1, pages)):
        for question in questions:
            document = documents[question.document]
            _check_context(retriever.context_pages(question, document), question, document, retriever.k)
    assert gme_retriever.embedder.forward_calls == forward_calls  # everything was prepared up front


def test_gme_is_top_k_plus_one_minus_asked(corpus, gme_retriever: GmeRetriever) -> None:
    questions, documents, _ = corpus
    for question in questions:
        document = documents[question.document]
        numbers, scores = gme_retriever.scores(question, document)
        assert sorted(numbers.tolist()) == list(range(1, document.page_count + 1))  # same document, every page
        ranked = [int(numbers[i]) for i in np.lexsort((numbers, -scores))]
        asked = parse_question(question.question).page
        expected = sorted([p for p in ranked[:3] if p != asked][:2])
        assert gme_retriever.context_pages(question, document) == expected


def test_none_and_oracle_behaviour(corpus) -> None:
    questions, documents, pages = corpus
    none, oracle = NoRetriever(2, pages), OracleRetriever(2, pages)
    for question in questions:
        document = documents[question.document]
        asked = parse_question(question.question).page
        if asked is None:
            assert none.context_pages(question, document) == [1, 2]
        else:
            assert none.context_pages(question, document) == []
        gold = sorted(set(question.extra["evidence_pages"]) - {asked})[:2]
        assert oracle.context_pages(question, document) == gold
        bare = Question(question.id, question.question, question.document, question.answer)  # no evidence
        assert oracle.context_pages(bare, document) == none.context_pages(bare, document)
    short = Document("short.pdf", Path("short.pdf"), "0" * 64, page_count=1)
    assert NoRetriever(2).context_pages(Question("s", "该专利的名称是什么？", "short.pdf"), short) == [1]
    assert NoRetriever(2).context_pages(Question("s", "在文件中第1页的图中，部件1是什么？", "short.pdf"), short) == []


def test_recall_table(corpus, gme_retriever: GmeRetriever) -> None:
    questions, documents, pages = corpus
    widest = max(len(set(q.extra["evidence_pages"]) - {parse_question(q.question).page}) for q in questions)
    oracle_full = recall_at_k(OracleRetriever(widest, pages), questions, documents)
    assert oracle_full and all(value == 1.0 for value in oracle_full.values())
    tables = {"none": recall_report(NoRetriever(2, pages), questions, documents),
              "oracle": recall_report(OracleRetriever(2, pages), questions, documents),
              "gme (tiny, random)": recall_report(gme_retriever, questions, documents)}
    kinds = sorted(tables["none"])
    print(f"\nrecall@2 on the synthetic train split ({len(questions)} questions; oracle@{widest}: 1.0)")
    print(f"{'retriever':20s}" + "".join(f"{kind:>26s}" for kind in kinds))
    for name, report in tables.items():
        print(f"{name:20s}" + "".join(
            f"{report[k]['recall'] if report[k]['recall'] is not None else float('nan'):>13.3f} (n={report[k]['scored']:>2d},skip={report[k]['skipped']:>2d})"
            for k in kinds))
    for report in tables.values():
        for kind, row in report.items():
            assert row["scored"] == 0 or 0.0 <= row["recall"] <= 1.0
    # oracle@2 misses only what k cuts off: each question gets min(k, |gold|) / |gold|
    expected = [min(2, len(g)) / len(g) for q in questions
                if (g := set(q.extra["evidence_pages"]) - {parse_question(q.question).page})]
    assert tables["oracle"]["all"]["recall"] == pytest.approx(float(np.mean(expected)))
    skipped = sum(1 for q in questions if not set(q.extra["evidence_pages"]) - {parse_question(q.question).page})
    assert tables["none"]["all"]["skipped"] == skipped


def _split_by_document(questions: list[Question]) -> tuple[list[Question], list[Question]]:
    names = sorted({q.document for q in questions})
    held = set(names[: max(1, len(names) // 4)])
    return [q for q in questions if q.document not in held], [q for q in questions if q.document in held]


@pytest.mark.parametrize("use_gme", [False, True])
def test_style_examples_from_train_only(corpus, gme_retriever: GmeRetriever, use_gme: bool) -> None:
    questions, _, _ = corpus
    tagged = [Question(q.id, q.question, q.document, f"{q.answer}#{q.id}") for q in questions]  # answer -> source
    train, heldout = _split_by_document(tagged)
    source = {q.answer: q for q in train}
    similarity = gme_retriever.similarity if use_gme else None
    for queries in (heldout, train):  # held-out questions, and training rows (must never see themselves)
        style = style_examples(queries, train, 2, similarity)
        assert set(style) == {q.id for q in queries}
        for query in queries:
            answers = style[query.id]
            assert len(answers) == 2 and all(a in source for a in answers)  # from the train pool only
            for answer in answers:
                assert source[answer].id != query.id and source[answer].document != query.document
    # a query identical to a training question (same document and text) never gets its answer
    lone = train[0]
    twin = Question("twin", lone.question, lone.document, "X")
    pool = [lone, Question("other", "无关的问题", "other.pdf", "B")]
    assert style_examples([twin], pool, 1, similarity, exclude_same_document=False)[twin.id] == ["B"]
    assert style_examples([lone], pool, 5, similarity, exclude_same_document=False)[lone.id] == ["B"]
    assert style_examples(heldout, train, 0, similarity) == {q.id: [] for q in heldout}


def test_style_examples_pick_the_most_similar() -> None:
    train = [Question("a", "部件5位于部件3的哪一侧？", "d1.pdf", "左侧"),
             Question("b", "该专利要解决的技术问题是什么？", "d2.pdf", "散热差"),
             Question("c", "编号为7的部件是什么？", "d3.pdf", "传动带")]
    queries = [Question("q1", "部件2位于部件4的哪一侧？", "t.pdf"), Question("q2", "编号为9的部件是什么？", "t.pdf")]
    assert style_examples(queries, train, 1) == {"q1": ["左侧"], "q2": ["传动带"]}
    vectors = lexical_embed(["部件", "部件", ""])
    np.testing.assert_array_equal(vectors[0], vectors[1])
    assert np.linalg.norm(vectors[0]) == pytest.approx(1.0) and not vectors[2].any()


def test_make_retriever_names(corpus) -> None:
    _, _, pages = corpus
    assert isinstance(make_retriever({"name": "none", "k": 2}, pages, "unused"), NoRetriever)
    assert isinstance(make_retriever({"name": "oracle", "k": 2}, pages, "unused"), OracleRetriever)
    with pytest.raises(ValueError, match="unknown retrieval"):
        make_retriever({"name": "tfidf", "k": 2}, pages, "unused")
    with pytest.raises(ValueError, match="need the OCR layer"):
        make_retriever({"name": "bm25", "k": 2}, pages, "unused")
