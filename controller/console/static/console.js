/* relayfleet console: live parts.
 *
 * An element with data-live-url and data-live="running" is fetched again every second
 * and replaced by the fragment the server answers (the same partial template the page
 * rendered), until the fragment says data-live="finished". Details the reader opened or
 * closed stay so, and focus stays on the button or summary it was on. Without this
 * script the page still shows the state it was loaded with, and a refresh link.
 */
(function () {
  "use strict";

  var PERIOD_MS = 1000;
  var RETRY_MS = 5000;

  function note(element, text) {
    var place = element.querySelector("[data-live-note]");
    if (place) {
      place.textContent = text;
    }
  }

  /* Which element had focus inside the live part, as something findable in the next one. */
  function focusKey(element) {
    var active = document.activeElement;
    if (!active || !element.contains(active)) {
      return null;
    }
    if (active.id) {
      return "#" + active.id;
    }
    if (active.tagName === "SUMMARY" && active.parentElement && active.parentElement.id) {
      return "#" + active.parentElement.id + " > summary";
    }
    return null;
  }

  /* Keep each details element open or closed as the reader left it. */
  function keepDetails(from, to) {
    var open = {};
    from.querySelectorAll("details[id]").forEach(function (details) {
      open[details.id] = details.open;
    });
    to.querySelectorAll("details[id]").forEach(function (details) {
      if (Object.prototype.hasOwnProperty.call(open, details.id)) {
        details.open = open[details.id];
      }
    });
  }

  function follow(element) {
    var url = element.getAttribute("data-live-url");
    var last = null;

    function swap(html) {
      var holder = document.createElement("template");
      holder.innerHTML = html.trim();
      var next = holder.content.firstElementChild;
      if (!next || next.id !== element.id) {
        throw new Error("unexpected answer");
      }
      if (html !== last) {
        last = html;
        var key = focusKey(element);
        keepDetails(element, next);
        element.replaceWith(next);
        element = next;
        if (key) {
          var target = element.querySelector(key);
          if (target) {
            target.focus();
          }
        }
      }
      return element.getAttribute("data-live") === "running";
    }

    function tick() {
      fetch(url, {credentials: "same-origin", cache: "no-store",
                  headers: {"Accept": "text/html"}})
        .then(function (response) {
          if (response.redirected || response.status === 401) {
            // the session ended: the answer is the sign-in page, not the fragment
            throw new Error("signed out");
          }
          if (!response.ok) {
            throw new Error("answered " + response.status);
          }
          return response.text();
        })
        .then(function (html) {
          if (swap(html)) {
            window.setTimeout(tick, PERIOD_MS);
          }
        })
        .catch(function (error) {
          if (error.message === "signed out") {
            note(element, "Live updates stopped: you were signed out. Reload the page to sign in again.");
            return;
          }
          note(element, "Live updates paused (" + error.message + "); trying again in a few seconds.");
          window.setTimeout(tick, RETRY_MS);
        });
    }

    window.setTimeout(tick, PERIOD_MS);
  }

  function start() {
    document.querySelectorAll("[data-live-url][data-live='running']").forEach(follow);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
}());
