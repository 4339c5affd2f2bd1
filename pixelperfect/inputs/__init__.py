"""Input files read by the services that need them (producer, training): image keys listed under a source or a
manifest (``sources``); annotation boxes and ground-truth masks, parsed and matched to keys (``annotations``)."""
