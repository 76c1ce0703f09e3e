"""OML: load, resolve params and connections, validate, compile to a manifest, plan into stages."""
