"""The two models: AutoLink (``kpray.models.autolink``) and the skeleton model (``kpray.models.skeleton``)."""
