"""Adapters that plug einfuse kernels into other frameworks; each imports its framework lazily, so
``import einfuse`` never needs them (``einfuse.integrations.transformers`` needs ``transformers``)."""
