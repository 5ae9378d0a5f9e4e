(function () {
  "use strict";
  // The questions come embedded as JSON (fetch() of a local file fails under file://); every text goes in
  // through textContent, never as markup.
  var data = JSON.parse(document.getElementById("browse-data").textContent);
  var runs = data.runs, questions = data.questions;
  var byId = function (id) { return document.getElementById(id); };

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = text; }
    return node;
  }
  function num(x) { return x === null || x === undefined ? "–" : x.toFixed(3); }
  function signed(x) {
    if (x === null || x === undefined) { return "–"; }
    return (x > 0 ? "+" : x < 0 ? "−" : "±") + Math.abs(x).toFixed(3);
  }
  function tone(x) { return x === null || x === undefined || x === 0 ? "" : x < 0 ? " neg" : " pos"; }
  function compared() { return Number(byId("compare").value || 1); }
  function delta(q) { var a = q.answers[compared()]; return a ? a.delta : null; }

  byId("legend").textContent = data.split + " split, " + questions.length + " questions. Baseline: " + runs[0].label +
    ". Δ: per-question composite, run − baseline (the report's paired difference). Wrong: char F1 < " +
    data.wrong_below + ". Blue frame: the asked page; gold frame: a gold evidence page. Generated " + data.generated + ".";
  data.kinds.forEach(function (kind) { var o = el("option", null, kind); o.value = kind; byId("kind").appendChild(o); });
  runs.forEach(function (run, k) {
    if (k === 0) { return; }
    var o = el("option", null, run.label); o.value = String(k); byId("compare").appendChild(o);
  });
  if (runs.length < 3) { byId("compare-label").hidden = true; }
  if (runs.length < 2) { byId("delta").disabled = true; byId("sort").disabled = true; }
  if (data.problems.length) {
    var box = byId("problems");
    box.hidden = false;
    box.querySelector("summary").textContent = data.problems.length + " problem(s) while building this page";
    data.problems.forEach(function (line) { box.querySelector("ul").appendChild(el("li", null, line)); });
  }

  var viewer = byId("viewer");
  function openPage(q, page) {
    viewer.querySelector("h2").textContent = q.document + " — page " + page.page + (page.asked ? " (asked)" : "") +
      ((q.evidence || []).indexOf(page.page) >= 0 ? " — gold evidence" : "");
    var views = viewer.querySelector(".views");
    views.textContent = "";
    page.views.forEach(function (view) {
      var figure = el("figure");
      var caption = el("figcaption", null, view.runs.map(function (k) { return runs[k].label; }).join(", ") + ": ");
      if (view.src) {
        var img = el("img", "full");
        img.src = view.src;
        img.width = view.size[0];
        img.height = view.size[1];
        img.alt = "page " + page.page;
        figure.appendChild(img);
        caption.appendChild(document.createTextNode("as the prompt sent it, " + view.size[0] + " × " + view.size[1] +
          " px (budget " + view.budget[0] + " px); cached file " + view.file[0] + " × " + view.file[1] + " px: "));
        var link = el("a", null, "open the file");
        link.href = view.src;
        link.target = "_blank";
        caption.appendChild(link);
      } else {
        caption.appendChild(document.createTextNode("no image (see the problems listed at the top)"));
      }
      figure.appendChild(caption);
      views.appendChild(figure);
    });
    viewer.hidden = false;
  }
  function closeViewer() { viewer.hidden = true; viewer.querySelector(".views").textContent = ""; }
  viewer.addEventListener("click", function (event) {
    if (event.target === viewer || event.target.classList.contains("close")) { closeViewer(); }
  });
  document.addEventListener("keydown", function (event) { if (event.key === "Escape") { closeViewer(); } });

  function pageTile(q, page) {
    var evidence = (q.evidence || []).indexOf(page.page) >= 0;
    var tile = el("figure", "page" + (page.asked ? " asked" : "") + (evidence ? " evidence" : ""));
    var button = el("button");
    button.type = "button";
    button.title = "page " + page.page + ": click for the page as the model got it";
    if (page.thumb) {
      var img = el("img", "thumb");
      img.loading = "lazy";
      img.src = page.thumb;
      img.alt = "page " + page.page;
      button.appendChild(img);
    } else {
      button.appendChild(el("span", "none", "no image"));
    }
    button.addEventListener("click", function () { openPage(q, page); });
    tile.appendChild(button);
    var seen = page.views.reduce(function (all, v) { return all.concat(v.runs); }, []);
    var who = seen.length < runs.length ? " (" + seen.map(function (k) { return runs[k].label; }).join(", ") + ")" : "";
    tile.appendChild(el("figcaption", null, "p" + page.page + " · " + (page.asked ? "asked" : "retrieved") +
      (evidence ? " ★" : "") + who));
    return tile;
  }

  function answerRow(answer, k) {
    var tr = el("tr");
    tr.appendChild(el("th", null, runs[k].label));
    var cell = el("td");
    if (!answer) {
      cell.appendChild(el("span", "empty", "(not answered by this run)"));
    } else {
      cell.appendChild(answer.text ? el("span", "answer", answer.text) : el("span", "empty answer", "(empty)"));
      if (answer.raw !== undefined) {
        var fold = el("details", "raw");
        fold.appendChild(el("summary", null, "raw reply"));
        fold.appendChild(el("pre", null, answer.raw));
        cell.appendChild(fold);
      }
    }
    tr.appendChild(cell);
    tr.appendChild(el("td", "num", answer ? "F1 " + num(answer.f1) : ""));
    var d = answer && k > 0 ? answer.delta : null;
    tr.appendChild(el("td", "num delta" + tone(d), k > 0 ? "Δ " + signed(d) : "baseline"));
    return tr;
  }

  function card(q) {
    var article = el("article", "q");
    article.dataset.id = q.id;
    var head = el("header");
    head.appendChild(el("span", "id", q.id));
    head.appendChild(el("span", "chip kind", q.kind));
    head.appendChild(el("span", "document", q.document));
    head.appendChild(el("span", "delta head"));
    article.appendChild(head);
    var body = el("div", "body");
    var text = el("div", "text");
    text.appendChild(el("p", "question", q.question));
    var gold = el("p", "gold");
    gold.appendChild(el("b", null, "gold: "));
    gold.appendChild(document.createTextNode(q.gold));
    text.appendChild(gold);
    if (q.evidence) {
      var shown = q.pages.map(function (p) { return p.page; });
      text.appendChild(el("p", "evidence", "gold evidence pages: " + q.evidence.map(function (p) {
        return "p" + p + (shown.indexOf(p) < 0 ? " (not shown to any run)" : "");
      }).join(", ")));
    }
    body.appendChild(text);
    var pages = el("div", "pages");
    q.pages.forEach(function (page) { pages.appendChild(pageTile(q, page)); });
    body.appendChild(pages);
    var table = el("table", "answers");
    q.answers.forEach(function (answer, k) { table.appendChild(answerRow(answer, k)); });
    body.appendChild(table);
    article.appendChild(body);
    return article;
  }

  var list = byId("list");
  var cards = questions.map(card);
  var haystack = questions.map(function (q) {
    var texts = [q.id, q.document, q.question, q.gold];
    q.answers.forEach(function (a) { if (a) { texts.push(a.text); if (a.raw) { texts.push(a.raw); } } });
    return texts.join("\n").toLowerCase();
  });
  var fragment = document.createDocumentFragment();
  cards.forEach(function (c) { fragment.appendChild(c); });
  list.appendChild(fragment);

  function apply() {
    var text = byId("search").value.trim().toLowerCase(), kind = byId("kind").value;
    var direction = byId("delta").value, wrong = byId("wrong").checked, shown = 0;
    questions.forEach(function (q, i) {
      var d = delta(q);
      var ok = (!kind || q.kind === kind) && (!text || haystack[i].indexOf(text) >= 0) && (!wrong || q.wrong);
      if (direction === "worse") { ok = ok && d !== null && d < 0; }
      if (direction === "better") { ok = ok && d !== null && d > 0; }
      if (direction === "same") { ok = ok && d === 0; }
      cards[i].hidden = !ok;
      if (ok) { shown += 1; }
      var badge = cards[i].querySelector(".delta.head");
      badge.className = "delta head" + tone(d);
      badge.textContent = runs.length > 1 ? "Δ " + signed(d) + (runs.length > 2 ? " (" + runs[compared()].label + ")" : "") : "";
    });
    byId("count").textContent = shown + " of " + questions.length + " questions";
  }
  function sort() {
    var how = byId("sort").value;
    var order = questions.map(function (q, i) { return i; });
    if (how !== "input") {
      var sign = how === "delta-asc" ? 1 : -1;
      order.sort(function (a, b) {
        var x = delta(questions[a]), y = delta(questions[b]);
        if (x === null || y === null) { return (x === null) - (y === null) || a - b; }
        return sign * (x - y) || a - b;
      });
    }
    var fragment = document.createDocumentFragment();
    order.forEach(function (i) { fragment.appendChild(cards[i]); });
    list.appendChild(fragment);
  }
  ["input", "change"].forEach(function (event) {  // selects and checkboxes: "change" everywhere, "input" in most
    ["search", "kind", "delta", "wrong"].forEach(function (id) { byId(id).addEventListener(event, apply); });
    byId("compare").addEventListener(event, function () { apply(); sort(); });
    byId("sort").addEventListener(event, sort);
  });
  apply();
}());
