"""Shared test helpers, the one place tests import from (never another test module or a
conftest): builders of events and mailboxes, readers of topics, the Dovecot users, the
producer service harness. Fixtures live in the conftest of the folder that uses them."""
