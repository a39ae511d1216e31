"""Demo images: real images built from pinned Debian packages (``debimage``), the demo apps they
carry (``apps``) and the layer entries they are written as (``layerentries``)."""
