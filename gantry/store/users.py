"""Users and their API tokens (stored as SHA-256 hashes only)."""

from __future__ import annotations

from gantry import timeutil
from gantry.store import keys
from gantry.store.table import MAIN_SK, Table
from gantry.users import User, hash_token, new_token


class UserStore:
    def __init__(self, table: Table) -> None:
        self.table = table

    def ensure_user(self, username: str, *, is_admin: bool = False) -> User:
        user = User(username=username, is_admin=is_admin)
        self.table.put_if_absent(
            self.table.item(keys.user(username), MAIN_SK, user.model_dump(), created=timeutil.iso())
        )
        stored = self.table.get(keys.user(username))
        assert stored is not None
        return User.model_validate(stored.doc)

    def create_token(self, username: str, *, is_admin: bool = False) -> str:
        """A new token for ``username`` (created if needed); only its hash is kept."""
        self.ensure_user(username, is_admin=is_admin)
        token = new_token()
        self.table.put(
            self.table.item(
                keys.token(hash_token(token)),
                MAIN_SK,
                None,
                username=username,
                created=timeutil.iso(),
            )
        )
        return token

    def user_for_token(self, token: str) -> User | None:
        item = self.table.get_item(keys.token(hash_token(token)), MAIN_SK)
        if item is None:
            return None
        stored = self.table.get(keys.user(str(item["username"])))
        return User.model_validate(stored.doc) if stored else None
