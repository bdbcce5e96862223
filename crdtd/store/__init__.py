"""Durable state on disk: the records a node must not lose, kept in ``node.state_dir``.

`crdtd.store.sqlite.Store` writes each batch of ``Node.records_to_persist()`` in one
durable transaction and hands back, at start-up, the records that rebuild the node. It
refuses (`crdtd.store.sqlite.StoreError`) any state directory it cannot trust rather
than reset it.
"""
