"""The `icseg` command line: serve, segment, prompt, batch, train and eval. The top floor: the only package
that may use the service (``app``), the model, the data layer and the SDK (``icseg_client``) together."""
