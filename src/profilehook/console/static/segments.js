// The new-segment form's live count: how many contacts its filter matches now, asked of
// /console/contacts/count (the builder's own fields, never the CSRF token) a moment after
// the last edit. No inline scripts (CSP).
"use strict";
(function () {
  var form = document.getElementById("segment-form");
  var out = document.getElementById("live-count");
  if (!form || !out) { return; }
  var url = form.getAttribute("data-count-url");
  var timer = null;
  var asked = 0;
  function query() {
    var params = new URLSearchParams();
    new FormData(form).forEach(function (value, name) {
      if (name !== "csrf_token" && name !== "name") { params.append(name, value); }
    });
    return params.toString();
  }
  function count() {
    var mine = ++asked;
    out.textContent = "Counting…";
    fetch(url + "?" + query(), { credentials: "same-origin", headers: { "accept": "application/json" } })
      .then(function (answer) { return answer.json(); })
      .then(function (body) {
        if (mine !== asked) { return; }
        if (body.count === null) {
          out.textContent = "Not counted yet: " + body.problems.join("; ");
        } else {
          out.textContent = body.count + " matching contact" + (body.count === 1 ? "" : "s") + " now";
        }
      })
      .catch(function () { if (mine === asked) { out.textContent = "Could not count: is the server reachable?"; } });
  }
  function later() {
    if (timer) { clearTimeout(timer); }
    timer = setTimeout(count, 300);
  }
  form.addEventListener("input", later);
  form.addEventListener("change", later);
  count();
})();
