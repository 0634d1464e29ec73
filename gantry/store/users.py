"""Users and their API tokens (stored as SHA-256 hashes only).

A token is two items: ``TOKEN#<hash>`` (what authentication reads) and ``TOKENREF#<pk>`` (its
public id, in its owner's list, and beside it its listing in everyone's list), written and
deleted together. Tokens made before the lists existed are given theirs by
``gantry.store.backfill``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from gantry import timeutil
from gantry.errors import NotFound, PermissionDenied
from gantry.store import keys, listings
from gantry.store.pagination import Paginator, count_update
from gantry.store.table import MAIN_SK, ConditionFailed, Table
from gantry.users import User, hash_token, new_token


class TokenInfo(BaseModel):
    """What is known of a token besides its secret."""

    pk: str
    user: str
    created: str
    expires: str | None = None


class UserStore:
    def __init__(self, table: Table) -> None:
        self.table = table
        self.paginator = Paginator(table)

    def ensure_user(self, username: str, *, is_admin: bool = False) -> User:
        user = User(username=username, is_admin=is_admin)
        self.table.put_if_absent(
            self.table.item(keys.user(username), MAIN_SK, user.model_dump(), created=timeutil.iso())
        )
        stored = self.table.get(keys.user(username))
        assert stored is not None
        return User.model_validate(stored.doc)

    def find_user(self, username: str) -> User | None:
        stored = self.table.get(keys.user(username))
        return User.model_validate(stored.doc) if stored else None

    def create_token(self, username: str, *, is_admin: bool = False) -> str:
        """A new token for ``username`` (created if needed); only its hash is kept."""
        return self.issue_token(username, is_admin=is_admin)[0]

    def issue_token(
        self, username: str, *, is_admin: bool = False, expires: datetime | None = None
    ) -> tuple[str, TokenInfo]:
        """A new token (shown this once) and its record; it stops working at ``expires``.

        ``is_admin`` makes a new user an admin; for a user who exists and is not one it is
        refused, not quietly dropped: any editor of an archive can create a user by naming a
        member, and whoever holds that name's tokens must not become an admin that way."""
        user = self.ensure_user(username, is_admin=is_admin)
        if is_admin and not user.is_admin:
            raise PermissionDenied(
                f"'{username}' is a user who is not an admin: an admin token is made only for "
                "a new user name or an admin"
            )
        token = new_token()
        token_hash = hash_token(token)
        info = TokenInfo(
            pk=str(uuid.uuid4()),
            user=username,
            created=timeutil.iso(),
            expires=timeutil.iso(expires) if expires else None,
        )
        list_key = keys.tokens_of(username)
        secret = self.table.item(
            keys.token(token_hash),
            MAIN_SK,
            None,
            username=username,
            created=info.created,
            expires=info.expires,
            token_pk=info.pk,
        )
        reference = self.table.item(
            keys.token_ref(info.pk),
            MAIN_SK,
            info.model_dump(),
            token_hash=token_hash,
            GSI1PK=list_key.value,
            GSI1SK=f"{info.created}#{info.pk}",
        )
        sort = f"{info.created}#{info.pk}"
        everyone = listings.listing(self.table, keys.token_ref(info.pk), keys.ALL_TOKENS, sort)
        self.table.transact_put(
            [secret, reference, everyone],
            updates=[count_update(list_key, 1), count_update(keys.ALL_TOKENS, 1)],
        )
        return token, info

    def user_for_token(self, token: str) -> User | None:
        holder = self.token_holder(token)
        return holder[0] if holder is not None else None

    def token_holder(self, token: str) -> tuple[User, datetime | None] | None:
        """The user a live token authenticates, and when the token expires (None: never)."""
        item = self.table.get_item(keys.token(hash_token(token)), MAIN_SK)
        if item is None:
            return None
        expires = timeutil.parse_iso(str(item["expires"])) if item.get("expires") else None
        if expires is not None and expires <= timeutil.now():
            return None
        user = self.find_user(str(item["username"]))
        return (user, expires) if user is not None else None

    def get_token(self, pk: str) -> TokenInfo:
        stored = self.table.get(keys.token_ref(pk))
        if stored is None:
            raise NotFound(f"Token {pk} not found")
        return TokenInfo.model_validate(stored.doc)

    def tokens_page(self, username: str, *, offset: int, limit: int) -> tuple[list[TokenInfo], int]:
        list_key = keys.tokens_of(username)
        docs = self.paginator.page(list_key, offset=offset, limit=limit)
        return [TokenInfo.model_validate(d.doc) for d in docs], self.paginator.count(list_key)

    def tokens_page_all(self, *, offset: int, limit: int) -> tuple[list[TokenInfo], int]:
        """Everyone's tokens, oldest first (admins' list)."""
        found, count = listings.page(
            self.table, self.paginator, keys.ALL_TOKENS, offset=offset, limit=limit
        )
        return [TokenInfo.model_validate(d.doc) for d in found], count

    def revoke_token(self, pk: str) -> None:
        """The token stops working at once; revoking it again changes nothing."""
        item = self.table.get_item(keys.token_ref(pk), MAIN_SK)
        if item is None:
            return
        list_key = keys.tokens_of(TokenInfo.model_validate_json(item["doc"]).user)
        deletes: list[dict[str, Any]] = [
            {"Key": {"PK": keys.token(str(item["token_hash"])), "SK": MAIN_SK}},
            {
                "Key": {"PK": keys.token_ref(pk), "SK": MAIN_SK},
                "ConditionExpression": "attribute_exists(PK)",
            },
        ]
        counts = [count_update(list_key, -1)]
        if self.table.get_item(keys.token_ref(pk), listings.LISTED_ALL):
            deletes.append(listings.delete_listing(keys.token_ref(pk)))
            counts.append(count_update(keys.ALL_TOKENS, -1))
        try:
            self.table.transact_delete(deletes, updates=counts)
        except ConditionFailed:
            return  # revoked concurrently: counted once
        self.paginator.clear(list_key)
        self.paginator.clear(keys.ALL_TOKENS)
