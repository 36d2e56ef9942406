"""The policy's ``authorization`` section and a route's ``authorize`` key.

Everything that can be checked without a request is checked here, at load time: rules compile,
roles exist, inheritance has no cycle, field paths are well formed. The engine then trusts
these models.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from apiforge.access.expressions import RuleSyntaxError, compile_expression
from apiforge.policy.base import PolicyModel

__all__ = [
    "ANY_PERMISSION",
    "AuthorizationSettings",
    "FieldAccess",
    "FieldList",
    "Grant",
    "ResourceSettings",
    "RoleSettings",
    "RouteAuthorization",
    "RuleSettings",
    "inherited_roles",
]

ANY_PERMISSION = "*"
"""In a rule's `permissions`: the rule applies to every permission."""

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\Z")
_PERMISSION = re.compile(r"[A-Za-z0-9_.:/-]+\Z")
_SEGMENT = re.compile(r"[^.\s]+\Z")

Permission = Annotated[str, Field(min_length=1, max_length=200)]


def _check_permission(permission: str) -> str:
    if not _PERMISSION.match(permission):
        raise ValueError(
            f"permission {permission!r} may hold only letters, digits and '_.:/-'"
            " (e.g. 'users:read')"
        )
    return permission


def _check_rule(source: str | None, what: str) -> str | None:
    if source is None:
        return None
    try:
        compile_expression(source)
    except RuleSyntaxError as exc:
        raise ValueError(f"{what} does not compile: {exc}") from None
    return source


class Grant(PolicyModel):
    """One permission a role grants, unconditionally or under a condition."""

    permission: Permission
    """The permission granted, e.g. `users:read`."""

    when: str | None = None
    """A CEL condition (see docs/authorization.md): the grant holds only while it is true, and
    not when it cannot be evaluated. Unset: the grant is unconditional. A role that inherits
    this grant inherits its condition."""

    @field_validator("permission")
    @classmethod
    def _check_permission(cls, permission: str) -> str:
        if permission == ANY_PERMISSION:
            raise ValueError(
                "a role lists its permissions one by one; '*' is only allowed in a rule's"
                " permissions"
            )
        return _check_permission(permission)

    @field_validator("when")
    @classmethod
    def _check_when(cls, when: str | None, info: ValidationInfo) -> str | None:
        return _check_rule(when, f"the condition of {info.data.get('permission', '?')!r}")


class RoleSettings(PolicyModel):
    """A role: the permissions it grants, its own and those of the roles it inherits."""

    inherits: list[str] = Field(default_factory=list)
    """Roles whose grants this role also has, transitively (`admin` inherits `support`, which
    inherits `user`). Conditional grants keep their condition."""

    permissions: list[Grant] = Field(default_factory=list)
    """What the role grants: each entry is a permission name (`users:read`, unconditional) or
    `{permission: users:read, when: "resource.id == principal.user_id"}` (only while the
    condition holds)."""

    @field_validator("permissions", mode="before")
    @classmethod
    def _strings_are_grants(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"permission": v} if isinstance(v, str) else v for v in value]
        return value


class RuleSettings(PolicyModel):
    """An attribute-based rule, in CEL. Deny rules win over everything else."""

    name: Annotated[str, Field(min_length=1, max_length=100)]
    """Names the rule in decisions (`rule:NAME`), events and `apiforge policy explain`."""

    effect: Literal["allow", "deny"]
    """`deny`: when the rule applies and `when` is true, or cannot be evaluated (fail closed),
    the request is denied whatever else allows it. `allow`: when it applies and `when` is true,
    the permission is granted (an `allow` rule that cannot be evaluated allows nothing)."""

    permissions: Annotated[list[Permission], Field(min_length=1)]
    """The permissions this rule is about; `"*"` means every permission."""

    roles: list[str] | None = None
    """Only principals holding one of these roles, directly or through `inherits`. Unset:
    every principal."""

    when: str | None = None
    """The CEL condition; unset, the rule applies unconditionally."""

    @field_validator("permissions")
    @classmethod
    def _check_permissions(cls, permissions: list[str]) -> list[str]:
        return [p if p == ANY_PERMISSION else _check_permission(p) for p in permissions]

    @field_validator("when")
    @classmethod
    def _check_when(cls, when: str | None, info: ValidationInfo) -> str | None:
        return _check_rule(when, f"rule {info.data.get('name', '?')!r}")


class FieldList(PolicyModel):
    """Which fields a role may read or write: `allow` (only these), `deny` (all but these).
    Paths are dotted (`address.city`); a path through a list applies to each element. Given
    both, a field must be under an `allow` path and under no `deny` path."""

    allow: list[str] | None = None
    """Only these paths (and everything below them)."""

    deny: list[str] | None = None
    """Every path except these (and everything below them)."""

    @field_validator("allow", "deny")
    @classmethod
    def _check_paths(cls, paths: list[str] | None) -> list[str] | None:
        for path in paths or ():
            if not path or not all(_SEGMENT.match(s) for s in path.split(".")):
                raise ValueError(
                    f"{path!r} is not a dotted field path; write e.g. 'email' or"
                    " 'address.city' (no empty segments, no spaces)"
                )
        return paths

    @model_validator(mode="after")
    def _check_one_given(self) -> FieldList:
        if self.allow is None and self.deny is None:
            raise ValueError("give `allow` or `deny` (or both)")
        return self


class FieldAccess(PolicyModel):
    """One role's field visibility for one resource type."""

    read: FieldList | None = None
    """The fields this role reads. Unset: all of them."""

    write: FieldList | None = None
    """The fields this role may send in a body. Unset: all of them."""


class ResourceSettings(PolicyModel):
    """A resource type: what makes an object visible, and its fields per role."""

    read: Permission
    """The permission that makes an object of this type visible. A caller refused an action on
    an object they cannot read gets 404 rather than 403: its existence is not disclosed."""

    fields: dict[str, FieldAccess] = Field(default_factory=dict)
    """Per role, the fields it reads and writes. A principal reads (writes) a field when any of
    its roles does; a role without an entry here reads and writes every field. Field rules are
    per role as written: they are not inherited (inheriting a restriction would narrow what an
    inheriting role sees). A principal with no roles reads and writes nothing of a type that has
    `fields` at all."""

    @field_validator("read")
    @classmethod
    def _check_read(cls, permission: str) -> str:
        return _check_permission(permission)


class AuthorizationSettings(PolicyModel):
    """Who may do what: roles (RBAC), rules in CEL (ABAC) and per-role field visibility. The
    decision for a permission: (1) a `deny` rule that applies and whose condition is true, or
    cannot be evaluated, denies; (2) otherwise a role of the principal that grants it
    (unconditionally, or with a true condition), or an `allow` rule that applies and whose
    condition is true, allows; (3) otherwise it is denied. See docs/authorization.md.

    A worked example (the demo's): users read and update their own profile only, support
    reads every profile but never its email or age, admins update anyone and suspend anyone
    but themselves:

    ```yaml
    authorization:
      roles:
        user:
          permissions:
            - {permission: "users:read", when: "resource.username == principal.username"}
            - {permission: "users:update", when: "resource.username == principal.username"}
        support: {inherits: [user], permissions: ["users:read"]}
        admin: {inherits: [support], permissions: ["users:update", "users:suspend"]}
      rules:
        - name: no-self-suspension
          effect: deny                       # a deny rule wins over every grant
          permissions: ["users:suspend"]
          when: "resource.username == principal.username"
      resources:
        user:
          read: "users:read"                 # who may not read it gets 404, not 403
          fields:
            support: {read: {deny: [email, age]}}
            user: {write: {allow: [email, age, bio]}}
    routes:
      "GET /v1/users/{id}":
        auth: both
        authorize: {permission: "users:read", resource: user, check_response: true}
      "POST /v1/users/{id}/suspend":
        auth: both
        authorize: {permission: "users:suspend", resource: user}
    ```

    `apiforge policy explain --as role:support GET /v1/users/1` prints what decides, and
    `apiforge policy test` checks a table of expected decisions."""

    mode: Literal["enforce", "report"] = "enforce"
    """`enforce` refuses what is denied; `report` lets everything through and logs the
    decisions that would have refused, to try a new policy on live traffic."""

    roles: dict[str, RoleSettings] = Field(default_factory=dict)
    """The roles: `name: {inherits: [...], permissions: [...]}`. Role names start with a
    letter and hold letters, digits and `_.-`."""

    rules: list[RuleSettings] = Field(default_factory=list)
    """Rules evaluated in order: `{name, effect, permissions, roles, when}`."""

    resources: dict[str, ResourceSettings] = Field(default_factory=dict)
    """Resource types: `name: {read: PERMISSION, fields: {ROLE: {read, write}}}`."""

    @property
    def enabled(self) -> bool:
        """Authorization is configured: some role or rule exists."""
        return bool(self.roles or self.rules)

    @model_validator(mode="after")
    def _check_references(self) -> AuthorizationSettings:
        for name, role in self.roles.items():
            if not _NAME.match(name):
                raise ValueError(
                    f"roles.{name}: a role name starts with a letter and holds letters, digits"
                    " and '_.-'"
                )
            for parent in role.inherits:
                if parent not in self.roles:
                    raise ValueError(
                        f"roles.{name}.inherits: {parent!r} is not a role; define it under"
                        " authorization.roles or remove it"
                    )
        inherited_roles(self.roles)  # raises on a cycle
        seen: set[str] = set()
        for index, rule in enumerate(self.rules):
            if rule.name in seen:
                raise ValueError(f"rules.{index}.name: {rule.name!r} is used twice; rename one")
            seen.add(rule.name)
            for role_name in rule.roles or ():
                if role_name not in self.roles:
                    raise ValueError(
                        f"rules.{index}.roles: {role_name!r} is not a role; define it under"
                        " authorization.roles or remove it"
                    )
        for type_name, resource in self.resources.items():
            for role_name in resource.fields:
                if role_name not in self.roles:
                    raise ValueError(
                        f"resources.{type_name}.fields: {role_name!r} is not a role; define it"
                        " under authorization.roles or remove it"
                    )
        return self


def inherited_roles(roles: Mapping[str, RoleSettings]) -> dict[str, tuple[str, ...]]:
    """For each role, itself and every role it inherits, transitively, nearest first.

    Raises:
        ValueError: inheritance has a cycle, named in the message.
    """
    closure: dict[str, tuple[str, ...]] = {}

    def visit(name: str, path: tuple[str, ...]) -> tuple[str, ...]:
        if name in path:
            cycle = " -> ".join((*path[path.index(name):], name))
            raise ValueError(
                f"roles.{name}.inherits: inheritance cycle {cycle}; remove one of these"
                " `inherits` entries"
            )
        if name not in closure:
            order = [name]
            for parent in roles[name].inherits if name in roles else ():
                for ancestor in visit(parent, (*path, name)):
                    if ancestor not in order:
                        order.append(ancestor)
            closure[name] = tuple(order)
        return closure[name]

    for role in roles:
        visit(role, ())
    return closure


class RouteAuthorization(PolicyModel):
    """What a route needs: a permission, and the type of object it acts on."""

    permission: Permission
    """The permission the caller needs, e.g. `users:read`."""

    resource: str | None = None
    """The resource type (a key of `authorization.resources`) of the object the route acts on.
    Rules see the object as `resource`: before the app runs it holds the path parameters (typed
    by `params.path`). Refusals of objects the caller cannot read are 404, not 403."""

    check_response: bool = False
    """Check the response too: an object of type `resource` that the caller cannot read is
    answered 404, a list is filtered to the readable items, and only the fields the caller's
    roles may read are sent."""

    @field_validator("permission")
    @classmethod
    def _check_permission(cls, permission: str) -> str:
        return _check_permission(permission)
