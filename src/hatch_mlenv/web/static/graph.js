// mlenv serve: click a package in the dependency graph to see what it depends on (blue) and
// what depends on it (orange); the panel above the graph names it and links to its row in the
// table. Without this script every node is still a link to that row. Text is set with
// textContent only: nothing from the page is ever parsed as HTML.
(function () {
  "use strict";
  var svg = document.getElementById("graph");
  var panel = document.getElementById("graph-selection");
  if (!svg || !panel) { return; }
  var edges = svg.querySelectorAll("g.edges path");

  function clear() {
    svg.classList.remove("focus");
    svg.querySelectorAll(".on, .dep, .user").forEach(function (el) { el.classList.remove("on", "dep", "user"); });
    panel.textContent = "";
  }

  function select(node) {
    clear();
    svg.classList.add("focus");
    node.classList.add("on");
    var deps = 0, users = 0;
    edges.forEach(function (edge) {
      if (edge.dataset.from === node.id) {
        edge.classList.add("dep");
        var target = document.getElementById(edge.dataset.to);
        if (target) { target.classList.add("dep"); }
        deps += 1;
      } else if (edge.dataset.to === node.id) {
        edge.classList.add("user");
        var source = document.getElementById(edge.dataset.from);
        if (source) { source.classList.add("user"); }
        users += 1;
      }
    });
    var title = node.querySelector("title");
    var name = document.createElement("strong");
    name.textContent = title ? title.textContent : node.id;
    var depsText = document.createElement("span");
    depsText.className = "dep";
    depsText.textContent = deps + (deps === 1 ? " dependency" : " dependencies");
    var usersText = document.createElement("span");
    usersText.className = "user";
    usersText.textContent = users + (users === 1 ? " package depends on it" : " packages depend on it");
    var details = document.createElement("a");
    details.href = node.getAttribute("href");
    details.className = "details";
    details.addEventListener("click", function () {
      var list = document.getElementById("package-list");
      if (list) { list.open = true; }
    });
    details.textContent = "details in the table ↓";
    panel.append(name, ": ", depsText, ", ", usersText, " · ", details);
  }

  svg.addEventListener("click", function (event) {
    var node = event.target.closest ? event.target.closest("a.node") : null;
    if (!node) { clear(); return; }
    event.preventDefault();
    select(node);
  });
  // a row's "show in the graph" link selects its node too
  document.querySelectorAll("a.to-graph").forEach(function (link) {
    link.addEventListener("click", function () {
      var node = document.getElementById(link.getAttribute("href").slice(1));
      if (node) { select(node); }
    });
  });
}());
