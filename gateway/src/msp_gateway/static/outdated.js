/* The help page: the portal does not work in Internet Explorer 9 and below, and "the user
   will be prompted to update their browser". Loaded with `nomodule`, so only browsers that
   cannot run the app (no ES modules: every Internet Explorer) run this; written in ES3 so
   they can. Nothing here reads or sends anything. */
(function () {
  function prompt() {
    var main = document.getElementById("main");
    if (!main) return;
    main.innerHTML = "";
    var box = document.createElement("div");
    box.className = "card narrow";
    box.setAttribute("role", "alert");
    var title = document.createElement("h1");
    title.appendChild(document.createTextNode("Please update your browser"));
    var text = document.createElement("p");
    text.appendChild(document.createTextNode(
      "MySecurePractice does not work in this browser (Internet Explorer and other out-of-date browsers). " +
      "Please use the latest Google Chrome, Mozilla Firefox or Safari."));
    box.appendChild(title);
    box.appendChild(text);
    main.appendChild(box);
  }
  if (document.readyState === "loading") {
    if (document.addEventListener) document.addEventListener("DOMContentLoaded", prompt, false);
    else window.attachEvent("onload", prompt);
  } else {
    prompt();
  }
})();
