"""Process entry points that wire objects from the ``revocation`` library."""
