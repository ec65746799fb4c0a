"""Sources turn an HTTP request body into events: native JSON API, Copernica, Amplitude."""
