// The interactive API reference: Swagger UI (vendored) over this server's /openapi.json.
"use strict";
(function () {
  var root = document.getElementById("swagger-ui");
  window.SwaggerUIBundle({
    url: root.getAttribute("data-spec"),
    domNode: root,
    deepLinking: false,
    validatorUrl: null,
    tryItOutEnabled: false,
  });
})();
