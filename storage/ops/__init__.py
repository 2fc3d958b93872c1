"""The storage operations, written once for both stores.

Each is a plain function over a sqlite3 connection in autocommit mode (see
storage/connection.py); whatever it writes is one `write_transaction`, and the
reads it needs around that run on the same connection. `SyncStore` (the trainer,
no event loop) calls them directly; `Database` (the bot) runs each one as a single
call on the thread of its aiosqlite connection. The SQL text is storage/queries.py.

  adapters  adapters, versions, channel and guild bindings
  feedback  turns, votes, review, imports, forgetting a user
  runs      training runs, the training lock, state, stats, the admin log
"""
