// Live events: a Server-Sent Events tail of the calls this workspace receives. Every value is
// put in the page as text (textContent), never as HTML.
"use strict";
(function () {
  var list = document.getElementById("tail");
  var state = document.getElementById("tail-state");
  var form = document.getElementById("tail-filters");
  var pauseButton = document.getElementById("pause");
  var template = document.getElementById("call-template");
  var MAX_ROWS = 500;
  var source = null;
  var paused = false;
  var held = [];

  function text(el, value) { el.textContent = value; }

  function problems(detail) {
    if (detail === null || detail === undefined) { return ""; }
    if (typeof detail === "string") { return detail; }
    return detail.map(function (p) { return (p.loc || []).join(".") + ": " + p.msg; }).join("\n");
  }

  function link(href, label, cls) {
    var a = document.createElement("a");
    a.href = href;
    a.textContent = label;
    if (cls) { a.className = cls; }
    return a;
  }

  function render(call) {
    var row = template.content.firstElementChild.cloneNode(true);
    row.classList.add(call.accepted ? "ok" : "refused");
    row.setAttribute("data-seq", call.seq);
    text(row.querySelector(".status"), call.status + (call.accepted ? " accepted" : " refused"));
    text(row.querySelector(".method"), call.method);
    text(row.querySelector(".target"), call.target);
    text(row.querySelector(".source"), call.source + (call.source_id ? " · " + call.source_id : ""));
    text(row.querySelector(".at"), call.at);
    row.querySelector(".at").setAttribute("datetime", call.at);
    text(row.querySelector(".detail"), problems(call.detail));
    var events = row.querySelector(".events");
    call.contact_ids.slice(0, 10).forEach(function (id) {
      events.appendChild(document.createTextNode("contact "));
      events.appendChild(link("/console/contact?id=" + encodeURIComponent(id), id, "contact"));
      events.appendChild(document.createTextNode(" "));
    });
    call.event_ids.slice(0, 10).forEach(function (id) {
      events.appendChild(document.createTextNode("event "));
      events.appendChild(link("/console/event?id=" + encodeURIComponent(id), id, "event"));
      var status = document.createElement("span");
      status.className = "event-status";
      status.setAttribute("data-event", id);
      status.textContent = "accepted";
      events.appendChild(document.createTextNode(" "));
      events.appendChild(status);
      events.appendChild(document.createTextNode(" "));
    });
    if (call.event_count > 10) {
      events.appendChild(document.createTextNode("… " + call.event_count + " events in all"));
    }
    text(row.querySelector(".body"), call.body + (call.truncated ? "\n… (cut)" : ""));
    text(row.querySelector(".curl"), call.curl);
    row.querySelector(".copy").addEventListener("click", function (event) {
      window.profilehookCopy(call.curl, event.target);
    });
    list.insertBefore(row, list.firstChild);
    while (list.children.length > MAX_ROWS) { list.removeChild(list.lastChild); }
    if (call.event_ids.length) { setTimeout(function () { statuses(row, call.event_ids.slice(0, 10), 2); }, 1000); }
  }

  function statuses(row, ids, tries) {
    var query = ids.map(function (id) { return "id=" + encodeURIComponent(id); }).join("&");
    fetch(list.getAttribute("data-status") + "?" + query, { credentials: "same-origin" })
      .then(function (r) { return r.status === 200 ? r.json() : {}; })
      .then(function (found) {
        var waiting = false;
        row.querySelectorAll(".event-status").forEach(function (el) {
          var status = found[el.getAttribute("data-event")];
          if (status) { el.textContent = status; }
          if (status === "queued") { waiting = true; }
        });
        if (waiting && tries > 1) { setTimeout(function () { statuses(row, ids, tries - 1); }, 2000); }
      })
      .catch(function () { /* the row keeps "accepted" */ });
  }

  function connect() {
    if (source) { source.close(); }
    var params = new URLSearchParams(new FormData(form));
    var query = params.toString();
    history.replaceState(null, "", "/console/live" + (query ? "?" + query : ""));
    source = new EventSource(list.getAttribute("data-stream") + (query ? "?" + query : ""));
    source.onopen = function () { text(state, paused ? "Paused." : "Watching: new calls appear at the top."); };
    source.onerror = function () { text(state, "Connection lost: reconnecting…"); };
    source.addEventListener("call", function (event) {
      var call = JSON.parse(event.data);
      if (paused) {
        held.push(call);
        text(state, "Paused: " + held.length + " new call(s) held.");
      } else {
        render(call);
      }
    });
    source.addEventListener("ended", function () {
      source.close();
      text(state, "Your session has ended (signed out, expired or its key revoked): sign in again.");
    });
  }

  form.addEventListener("submit", function (event) { event.preventDefault(); connect(); });
  pauseButton.addEventListener("click", function () {
    paused = !paused;
    pauseButton.setAttribute("aria-pressed", String(paused));
    pauseButton.textContent = paused ? "Resume" : "Pause";
    if (!paused) {
      held.forEach(render);
      held = [];
      text(state, "Watching: new calls appear at the top.");
    } else {
      text(state, "Paused.");
    }
  });
  document.getElementById("clear").addEventListener("click", function () {
    while (list.firstChild) { list.removeChild(list.firstChild); }
  });
  connect();
})();
