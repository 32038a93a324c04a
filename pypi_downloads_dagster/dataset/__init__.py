"""The dataset itself: its schema, planning and merging of rows, the store of fetched chunks, and the guards on a publication."""
