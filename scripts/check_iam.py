#!/usr/bin/env python3
"""Least-privilege check of template.yaml: who may do what, and who may invoke whom.

The SAM template is translated to plain CloudFormation with samtranslator (shipped with
aws-sam-cli), so the check sees what CloudFormation will create, including anything SAM adds
on its own (a managed policy for an event source, an invoke permission for an event).

Asserted, per Lambda function:
- its role is its own, defined in the template, assumable by lambda.amazonaws.com only;
- the role has no managed policies and no extra policy resources attached;
- the (action, resource) pairs its policies allow are exactly those in EXPECTED_GRANTS:
  one more action, one more resource, a wildcard or a literal ARN all fail, and so does a
  missing grant (the function would break at runtime);
- its invokers (AWS::Lambda::Permission) are exactly those in EXPECTED_INVOKERS, each with a
  SourceArn naming one route of the template's HTTP API or the template's schedule rule;
- no function URL, managed policy or IAM user opens another door;
- the secrets and queues carry resource policies that only deny (an Allow, to "*" or anyone,
  fails), for Principal "*" unless aws:PrincipalArn is exempt, and exactly as GUARDED says:
  each guarded action is denied, the exemptions are exactly the roles of the functions that
  call it (per EXPECTED_GRANTS) plus OperatorPrincipalArn when given, and no other action is
  denied (a deny on a management action could lock CloudFormation or the administrators out).
  Checked twice: as deployed with OperatorPrincipalArn empty, and with it set.
Also, because it is the queue->function wiring: the retry function consumes the signup queue
with partial batch failures, and the queue's visibility timeout is at least 6x its timeout.

Usage: check_iam.py [TEMPLATE] [--translated-out FILE [--translate-only]] [--self-test]
  --translated-out  also write the translated CloudFormation (JSON), e.g. for cfn-lint
  --translate-only  only write it, check nothing
  --self-test       also prove the check is strict: widened copies of the template must fail,
                    and equivalent rewrites of its deny-only policies must pass
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

# ------------------------------------------------------------------ expectations

TOKEN_ACTIONS = (
    "secretsmanager:GetSecretValue",
    "secretsmanager:PutSecretValue",
    "secretsmanager:UpdateSecretVersionStage",
)
# What Lambda's SQS poller calls with the function's role.
SQS_POLLER_ACTIONS = ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes")


def _logs(log_group: str) -> set[tuple[str, str]]:
    return {("logs:CreateLogStream", f"{log_group}.Arn"), ("logs:PutLogEvents", f"{log_group}.Arn")}


def _secrets() -> set[tuple[str, str]]:
    return {("secretsmanager:GetSecretValue", "AppSecret")} | {(a, "TokenSecret") for a in TOKEN_ACTIONS}


REPLAY_ACTIONS = ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem")

# (action, resource) pairs; a resource is "Logical" for a Ref, "Logical.Attr" for a GetAtt.
# Every function but events may emit an event (issue 15): SendMessage on the event queue.
EMIT = {("sqs:SendMessage", "EventsQueue.Arn")}
QUEUES = ("SignupQueue", "SignupDeadLetterQueue", "EventsQueue", "EventsDeadLetterQueue")
DEAD_LETTERS = ("SignupDeadLetterQueue", "EventsDeadLetterQueue")
EXPECTED_GRANTS: dict[str, set[tuple[str, str]]] = {
    "OAuthFunction": _logs("OAuthLogGroup")
    | _secrets()
    # the console: the receiver switch, queue counts, dead letters (look, redrive, discard)
    | {(a, "EventsStateSecret") for a in TOKEN_ACTIONS}
    | {("sqs:GetQueueAttributes", f"{q}.Arn") for q in QUEUES}
    | {(a, f"{q}.Arn") for a in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility") for q in DEAD_LETTERS}
    | {("sqs:SendMessage", "SignupQueue.Arn")}
    # the welcome goal's notice in the state table (shared/src/notices.rs): read only
    | {("dynamodb:GetItem", "SignupReplayTable.Arn")}
    | EMIT,
    "SignupFunction": _logs("SignupLogGroup")
    | _secrets()
    | {("sqs:SendMessage", "SignupQueue.Arn")}
    # replays of signed signups (docs/security.md, item 3)
    | {(a, "SignupReplayTable.Arn") for a in REPLAY_ACTIONS}
    | EMIT,
    "RefreshFunction": _logs("RefreshLogGroup") | _secrets() | EMIT,
    "SignupRetryFunction": _logs("SignupRetryLogGroup")
    | _secrets()
    | {(a, "SignupQueue.Arn") for a in SQS_POLLER_ACTIONS}
    # parking: signups waiting for a Keap reconnection go back to the queue with a delay
    | {("sqs:SendMessage", "SignupQueue.Arn")}
    # the state table: the welcome goal's notice (noted, cleared) and the welcome send slots
    # (taken, read when held)
    | {(a, "SignupReplayTable.Arn") for a in REPLAY_ACTIONS}
    | EMIT,
    "EventsFunction": _logs("EventsLogGroup")
    | {("secretsmanager:GetSecretValue", "AppSecret")}
    | {(a, "EventsStateSecret") for a in TOKEN_ACTIONS}
    | {(a, "EventsQueue.Arn") for a in SQS_POLLER_ACTIONS}
    # each failed delivery's backoff
    | {("sqs:ChangeMessageVisibility", "EventsQueue.Arn")},
}

# (principal, source): source is "Api:/stage/METHOD/path" or "Logical.Arn".
EXPECTED_INVOKERS: dict[str, set[tuple[str, str]]] = {
    "OAuthFunction": {
        ("apigateway.amazonaws.com", "HttpApi:/*/GET/oauth/start"),
        ("apigateway.amazonaws.com", "HttpApi:/*/GET/oauth/callback"),
        ("apigateway.amazonaws.com", "HttpApi:/*/GET/status"),
        ("apigateway.amazonaws.com", "HttpApi:/*/GET/admin"),
        ("apigateway.amazonaws.com", "HttpApi:/*/POST/admin/redrive"),
        ("apigateway.amazonaws.com", "HttpApi:/*/POST/admin/discard"),
        ("apigateway.amazonaws.com", "HttpApi:/*/POST/admin/enable-events"),
    },
    "SignupFunction": {
        ("apigateway.amazonaws.com", "HttpApi:/*/POST/signup"),
        ("apigateway.amazonaws.com", "HttpApi:/*/POST/form"),
        ("apigateway.amazonaws.com", "HttpApi:/*/OPTIONS/form"),
        ("apigateway.amazonaws.com", "HttpApi:/*/POST/form/*"),
        ("apigateway.amazonaws.com", "HttpApi:/*/OPTIONS/form/*"),
    },
    "RefreshFunction": {("events.amazonaws.com", "RefreshFunctionSchedule.Arn")},
    "SignupRetryFunction": set(),
    "EventsFunction": set(),
}

# Logical id -> CloudFormation type, for every resource a grant may name.
EXPECTED_TYPES = {
    "AppSecret": "AWS::SecretsManager::Secret",
    "TokenSecret": "AWS::SecretsManager::Secret",
    "SignupQueue": "AWS::SQS::Queue",
    "SignupDeadLetterQueue": "AWS::SQS::Queue",
    "SignupReplayTable": "AWS::DynamoDB::Table",
    "HttpApi": "AWS::ApiGatewayV2::Api",
    "RefreshFunctionSchedule": "AWS::Events::Rule",
    "OAuthLogGroup": "AWS::Logs::LogGroup",
    "SignupLogGroup": "AWS::Logs::LogGroup",
    "RefreshLogGroup": "AWS::Logs::LogGroup",
    "SignupRetryLogGroup": "AWS::Logs::LogGroup",
    "EventsStateSecret": "AWS::SecretsManager::Secret",
    "EventsQueue": "AWS::SQS::Queue",
    "EventsDeadLetterQueue": "AWS::SQS::Queue",
    "EventsLogGroup": "AWS::Logs::LogGroup",
}

RETRY_FUNCTION, RETRY_QUEUE = "SignupRetryFunction", "SignupQueue"

# Resource policies (template.yaml, "resource policies"; docs/security.md, item 7). Per resource,
# the actions denied to every principal but the exempt ones, and when: "always", or "operator"
# (only when OperatorPrincipalArn is given). Exempt: the roles of the functions whose
# EXPECTED_GRANTS hold the action on the resource, plus the operator when given. Only value and
# message actions belong here: CloudFormation and the administrators need the others.
SECRET_READ = ("secretsmanager:GetSecretValue",)
SECRET_WRITE = ("secretsmanager:PutSecretValue", "secretsmanager:UpdateSecretVersionStage")
QUEUE_SEND = ("sqs:SendMessage",)
QUEUE_CONSUME = ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility")
GUARDED: dict[str, dict[str, str]] = {
    "AppSecret": {**dict.fromkeys(SECRET_READ, "always"), **dict.fromkeys(SECRET_WRITE, "operator")},
    "TokenSecret": dict.fromkeys(SECRET_READ + SECRET_WRITE, "always"),
    "SignupQueue": dict.fromkeys(QUEUE_SEND + QUEUE_CONSUME, "always"),
    # Not SendMessage: SQS moves dead letters in itself, and that move must not be put at risk.
    "SignupDeadLetterQueue": dict.fromkeys(QUEUE_CONSUME, "always"),
    "EventsStateSecret": dict.fromkeys(SECRET_READ + SECRET_WRITE, "always"),
    "EventsQueue": dict.fromkeys(QUEUE_SEND + QUEUE_CONSUME, "always"),
    "EventsDeadLetterQueue": dict.fromkeys(QUEUE_CONSUME, "always"),
}
OPERATOR_PARAMETER, OPERATOR_CONDITION = "OperatorPrincipalArn", "HasOperatorPrincipal"
OPERATOR = "OperatorPrincipalArn (the operator)"  # stands for the operator in an exemption set
POLICY_TYPES = {  # type -> (targets property, document property)
    "AWS::SecretsManager::ResourcePolicy": ("SecretId", "ResourcePolicy"),
    "AWS::SQS::QueuePolicy": ("Queues", "PolicyDocument"),
    "AWS::SQS::QueueInlinePolicy": ("Queue", "PolicyDocument"),
}
PRINCIPAL_ARN_OPERATORS = ("ArnNotLike", "ArnNotEquals", "StringNotLike", "StringNotEquals")

# Resource types that grant access by themselves and have no place in this template.
FORBIDDEN_TYPES = {
    "AWS::Lambda::Url": "a function URL",
    "AWS::IAM::ManagedPolicy": "a managed policy",
    "AWS::IAM::User": "an IAM user",
    "AWS::IAM::Group": "an IAM group",
    "AWS::IAM::AccessKey": "an access key",
}

# ------------------------------------------------------------------ loading


class CfnLoader(yaml.SafeLoader):
    """A YAML loader that reads CloudFormation short tags (!Ref, !Sub, ...) as their long form."""


# CloudFormation reads 2012-10-17 as a string, PyYAML as a date: keep it a string.
CfnLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_tag(loader: CfnLoader, tag_suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "Condition":
        return {"Condition": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{tag_suffix}": value}


CfnLoader.add_multi_constructor("!", _construct_tag)


def load_template(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        return yaml.load(f, Loader=CfnLoader)


class _AnyManagedPolicy(dict):
    """Resolves every managed policy name offline, so a widened template translates and then fails."""

    def __contains__(self, name: object) -> bool:
        return True

    def __getitem__(self, name: str) -> str:
        return f"arn:aws:iam::aws:policy/{name}"

    def get(self, name: str, default: Any = None) -> str:
        return self[name]


class _OfflinePolicyLoader:
    def load(self) -> dict[str, str]:
        return _AnyManagedPolicy()


def translate(template: dict[str, Any]) -> dict[str, Any]:
    """SAM -> CloudFormation, offline. CodeUri (a local path) is swapped for a placeholder S3 URI."""
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    logging.getLogger("samtranslator").setLevel(logging.ERROR)  # its metrics chatter
    from samtranslator.translator.transform import transform

    template = copy.deepcopy(template)
    placeholder = "s3://placeholder-bucket/code.zip"
    function_globals = template.get("Globals", {}).get("Function", {})
    if "CodeUri" in function_globals:
        function_globals["CodeUri"] = placeholder
    for resource in template.get("Resources", {}).values():
        if resource.get("Type") == "AWS::Serverless::Function" and "CodeUri" in resource.get("Properties", {}):
            resource["Properties"]["CodeUri"] = placeholder
    return transform(template, {}, _OfflinePolicyLoader())


# ------------------------------------------------------------------ normalizing


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def ref_name(value: Any) -> str | None:
    """"X" for {"Ref": X}, "X.Attr" for a GetAtt; None for anything else (literals, Sub, Join)."""
    if isinstance(value, dict) and len(value) == 1:
        if "Ref" in value and isinstance(value["Ref"], str):
            return value["Ref"]
        getatt = value.get("Fn::GetAtt")
        if isinstance(getatt, str):
            getatt = getatt.split(".", 1)
        if isinstance(getatt, list) and len(getatt) == 2 and all(isinstance(p, str) for p in getatt):
            return f"{getatt[0]}.{getatt[1]}"
    return None


def _describe(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _has_wildcard(value: Any) -> bool:
    return "*" in _describe(value)


# ------------------------------------------------------------------ checks


class Problems(list):
    def add(self, where: str, message: str) -> None:
        self.append(f"{where}: {message}")


def _role_of(function_id: str, function: dict[str, Any], resources: dict[str, Any], problems: Problems) -> str | None:
    role = ref_name(function.get("Properties", {}).get("Role"))
    if not role or not role.endswith(".Arn") or role[:-4] not in resources:
        problems.add(function_id, f"Role must be !GetAtt <a role of this template>.Arn, found {_describe(function.get('Properties', {}).get('Role'))}")
        return None
    role_id = role[:-4]
    if resources[role_id].get("Type") != "AWS::IAM::Role":
        problems.add(function_id, f"Role {role_id} is a {resources[role_id].get('Type')}, not an AWS::IAM::Role")
        return None
    return role_id


def _check_trust(role_id: str, role: dict[str, Any], problems: Problems) -> None:
    trust = role.get("Properties", {}).get("AssumeRolePolicyDocument", {})
    statements = _as_list(trust.get("Statement", []))
    expected = [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]
    normalized = [
        {**s, "Action": s["Action"][0]} if isinstance(s.get("Action"), list) and len(s["Action"]) == 1 else s
        for s in statements
    ]
    normalized = [
        {**s, "Principal": {"Service": s["Principal"]["Service"][0]}}
        if isinstance(s.get("Principal", {}).get("Service"), list) and len(s["Principal"]["Service"]) == 1
        else s
        for s in normalized
    ]
    if normalized != expected:
        problems.add(role_id, f"trust policy must let lambda.amazonaws.com assume the role and nothing else, found {_describe(statements)}")


def _policy_documents(role_id: str, resources: dict[str, Any], problems: Problems) -> list[tuple[str, dict[str, Any]]]:
    """Every policy document that applies to the role: inline ones and attached policy resources."""
    role_props = resources[role_id].get("Properties", {})
    documents = [(f"{role_id}/{p.get('PolicyName')}", p.get("PolicyDocument", {})) for p in role_props.get("Policies", []) or []]
    for arn in role_props.get("ManagedPolicyArns", []) or []:
        problems.add(role_id, f"managed policy {_describe(arn)} attached; grant exact actions inline instead")
    if role_props.get("PermissionsBoundary") is not None:
        pass  # a boundary only narrows
    for other_id, other in resources.items():
        if other.get("Type") not in ("AWS::IAM::Policy", "AWS::IAM::RolePolicy"):
            continue
        props = other.get("Properties", {})
        attached = [ref_name(r) for r in _as_list(props.get("Roles", []))] + [ref_name(props.get("RoleName"))]
        if role_id in attached:
            documents.append((other_id, props.get("PolicyDocument", {})))
    return documents


def _grants(where: str, document: dict[str, Any], problems: Problems) -> set[tuple[str, str]]:
    grants: set[tuple[str, str]] = set()
    for index, statement in enumerate(_as_list(document.get("Statement", []))):
        at = f"{where} statement {index + 1}"
        unexpected_keys = set(statement) - {"Sid", "Effect", "Action", "Resource"}
        if unexpected_keys:
            problems.add(at, f"unexpected keys {sorted(unexpected_keys)} (NotAction/NotResource/Condition/Principal widen or obscure a grant)")
        if statement.get("Effect") != "Allow":
            problems.add(at, f"only Allow statements are expected, found Effect {_describe(statement.get('Effect'))}")
            continue
        actions = _as_list(statement.get("Action", []))
        resources = _as_list(statement.get("Resource", []))
        for action in actions:
            if not isinstance(action, str) or "*" in action or "?" in action:
                problems.add(at, f"action {_describe(action)} is not one exact action")
                continue
            service = action.split(":", 1)[0].lower()
            for resource in resources:
                name = ref_name(resource)
                if name is None:
                    kind = "a wildcard" if _has_wildcard(resource) else "not a reference to a resource of this template"
                    if service in ("secretsmanager", "sqs") and _has_wildcard(resource):
                        kind = f"a wildcard resource for {service}:*, which is forbidden"
                    problems.add(at, f"resource {_describe(resource)} for {action} is {kind}")
                    continue
                grants.add((action, name))
    return grants


def _normalize_case(grants: set[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, str]]:
    # IAM action names are case-insensitive; compare them lowercased, report them as written.
    return {(a.lower(), r): (a, r) for a, r in grants}


def _check_grants(function_id: str, role_id: str, resources: dict[str, Any], problems: Problems) -> set[tuple[str, str]]:
    grants: set[tuple[str, str]] = set()
    for where, document in _policy_documents(role_id, resources, problems):
        grants |= _grants(where, document, problems)
    actual = _normalize_case(grants)
    expected = _normalize_case(EXPECTED_GRANTS[function_id])
    for key in sorted(set(actual) - set(expected)):
        action, resource = actual[key]
        problems.add(function_id, f"grants {action} on {resource}, which it does not need (EXPECTED_GRANTS in {Path(__file__).name})")
    for key in sorted(set(expected) - set(actual)):
        action, resource = expected[key]
        problems.add(function_id, f"lacks {action} on {resource}, which it calls")
    return grants


def _permission_source(permission: dict[str, Any]) -> str | None:
    source = permission.get("Properties", {}).get("SourceArn")
    name = ref_name(source)
    if name:
        return name
    sub = source.get("Fn::Sub") if isinstance(source, dict) else None
    if isinstance(sub, list):
        sub = sub[0] if not sub[1] else None
    if isinstance(sub, str):
        match = re.fullmatch(
            r"arn:\$\{AWS::Partition\}:execute-api:\$\{AWS::Region\}:\$\{AWS::AccountId\}:\$\{(\w+)\}(/[^${}]*)", sub
        )
        if match:
            return f"{match.group(1)}:{match.group(2)}"
    return None


def _check_invokers(functions: dict[str, Any], resources: dict[str, Any], problems: Problems) -> None:
    actual: dict[str, set[tuple[str, str]]] = {f: set() for f in functions}
    for permission_id, permission in resources.items():
        if permission.get("Type") != "AWS::Lambda::Permission":
            continue
        props = permission.get("Properties", {})
        target = ref_name(props.get("FunctionName")) or ""
        target = target.removesuffix(".Arn")
        if target not in functions:
            problems.add(permission_id, f"FunctionName {_describe(props.get('FunctionName'))} is not a function of this template")
            continue
        if props.get("Action") != "lambda:InvokeFunction":
            problems.add(permission_id, f"action {_describe(props.get('Action'))}; only lambda:InvokeFunction is expected")
        source = _permission_source(permission)
        if source is None:
            problems.add(permission_id, f"SourceArn {_describe(props.get('SourceArn'))} must name one route of the HTTP API or a rule of this template")
            continue
        actual[target].add((props.get("Principal"), source))
    for function_id in functions:
        for principal, source in sorted(actual[function_id] - EXPECTED_INVOKERS.get(function_id, set())):
            problems.add(function_id, f"may be invoked by {principal} from {source}, which is not expected")
        for principal, source in sorted(EXPECTED_INVOKERS.get(function_id, set()) - actual[function_id]):
            problems.add(function_id, f"lacks the permission for {principal} from {source}")


def _check_queue_wiring(resources: dict[str, Any], problems: Problems) -> None:
    mappings = [
        (mid, m.get("Properties", {}))
        for mid, m in resources.items()
        if m.get("Type") == "AWS::Lambda::EventSourceMapping"
        and ref_name(m.get("Properties", {}).get("FunctionName")) == RETRY_FUNCTION
    ]
    if len(mappings) != 1:
        problems.add(RETRY_FUNCTION, f"expected exactly one event source mapping, found {len(mappings)}")
        return
    mapping_id, mapping = mappings[0]
    if ref_name(mapping.get("EventSourceArn")) != f"{RETRY_QUEUE}.Arn":
        problems.add(mapping_id, f"must consume {RETRY_QUEUE}, found {_describe(mapping.get('EventSourceArn'))}")
    if "ReportBatchItemFailures" not in (mapping.get("FunctionResponseTypes") or []):
        problems.add(mapping_id, "must set FunctionResponseTypes: [ReportBatchItemFailures]")
    timeout = resources.get(RETRY_FUNCTION, {}).get("Properties", {}).get("Timeout", 3)
    visibility = resources.get(RETRY_QUEUE, {}).get("Properties", {}).get("VisibilityTimeout", 30)
    if not (isinstance(timeout, int) and isinstance(visibility, int) and visibility >= 6 * timeout):
        problems.add(RETRY_QUEUE, f"VisibilityTimeout {visibility} must be at least 6x the retry function's Timeout {timeout}")


# ------------------------------------------------------------------ resource policies


class _NoValue:
    """What !Ref AWS::NoValue leaves: the list item or key is dropped."""


_NO_VALUE = _NoValue()


def _resolve_operator(value: Any, operator_given: bool, where: str, problems: Problems) -> Any:
    """`value` as CloudFormation sees it when OperatorPrincipalArn is given or empty: !If on
    HasOperatorPrincipal picks a branch, !Ref AWS::NoValue drops its item. Another !If is a problem."""
    if isinstance(value, list):
        items = [_resolve_operator(v, operator_given, where, problems) for v in value]
        return [v for v in items if v is not _NO_VALUE]
    if not isinstance(value, dict):
        return value
    if value == {"Ref": "AWS::NoValue"}:
        return _NO_VALUE
    if "Fn::If" in value and len(value) == 1:
        branches = value["Fn::If"]
        if isinstance(branches, list) and len(branches) == 3 and branches[0] == OPERATOR_CONDITION:
            return _resolve_operator(branches[1] if operator_given else branches[2], operator_given, where, problems)
        problems.add(where, f"!If on anything but {OPERATOR_CONDITION} ({_describe(value)}) cannot be judged here")
        return _NO_VALUE
    resolved = {k: _resolve_operator(v, operator_given, where, problems) for k, v in value.items()}
    return {k: v for k, v in resolved.items() if v is not _NO_VALUE}


def _check_operator_parameter(template: dict[str, Any], problems: Problems) -> None:
    parameter = template.get("Parameters", {}).get(OPERATOR_PARAMETER)
    if not isinstance(parameter, dict) or parameter.get("Default") != "":
        problems.add(OPERATOR_PARAMETER, 'expected a template parameter with Default "" (no operator exemption by default)')
    condition = template.get("Conditions", {}).get(OPERATOR_CONDITION)
    given = [{"Fn::Equals": [{"Ref": OPERATOR_PARAMETER}, ""]}], [{"Fn::Equals": ["", {"Ref": OPERATOR_PARAMETER}]}]
    if not (isinstance(condition, dict) and condition.get("Fn::Not") in given):
        problems.add(OPERATOR_CONDITION, f'expected the condition !Not [!Equals [!Ref {OPERATOR_PARAMETER}, ""]], found {_describe(condition)}')


def _mentions_operator(value: Any) -> bool:
    if isinstance(value, dict):
        return value == {"Ref": OPERATOR_PARAMETER} or any(_mentions_operator(v) for v in value.values())
    return isinstance(value, list) and any(_mentions_operator(v) for v in value)


def _is_everyone(principal: Any) -> bool:
    return principal == "*" or principal == {"AWS": "*"} or principal == {"AWS": ["*"]}


def _exempt_principals(at: str, condition: Any, resources: dict[str, Any], problems: Problems) -> set[str] | None:
    """The principals a Deny statement's condition lets through: role logical ids and OPERATOR."""
    if condition is None:
        return set()
    operators = condition if isinstance(condition, dict) else {}
    operator, keys = next(iter(operators.items())) if len(operators) == 1 else (None, None)
    key = next(iter(keys)) if isinstance(keys, dict) and len(keys) == 1 else None
    if operator not in PRINCIPAL_ARN_OPERATORS or not isinstance(key, str) or key.lower() != "aws:principalarn":
        problems.add(at, f"Condition must be one of {', '.join(PRINCIPAL_ARN_OPERATORS)} on aws:PrincipalArn alone, found {_describe(condition)}")
        return None
    values = _as_list(keys[key])
    if not values:
        problems.add(at, "aws:PrincipalArn condition with no value (an invalid policy)")
        return None
    exempt: set[str] = set()
    for value in values:
        name = ref_name(value)
        if name == OPERATOR_PARAMETER:
            exempt.add(OPERATOR)
        elif name and name.endswith(".Arn") and resources.get(name[:-4], {}).get("Type") == "AWS::IAM::Role":
            exempt.add(name[:-4])
        else:
            problems.add(at, f"exempts {_describe(value)}: only roles of this template (!GetAtt Role.Arn) and {OPERATOR_PARAMETER} may be")
            return None
    return exempt


def _policy_targets(policy_id: str, policy: dict[str, Any], problems: Problems) -> list[str]:
    targets_property, _ = POLICY_TYPES[policy["Type"]]
    targets = []
    for target in _as_list(policy.get("Properties", {}).get(targets_property)):
        name = ref_name(target)
        if name not in GUARDED:
            problems.add(policy_id, f"a resource policy on {_describe(target)}: only {', '.join(sorted(GUARDED))} are expected to have one")
            continue
        targets.append(name)
    return targets


def _statement_denials(
    at: str, statement: Any, target: str, resources: dict[str, Any], problems: Problems
) -> list[tuple[str, set[str]]]:
    """(action, exempt principals) for one statement of a policy on `target`."""
    if not isinstance(statement, dict):
        problems.add(at, f"not a statement: {_describe(statement)}")
        return []
    unexpected_keys = set(statement) - {"Sid", "Effect", "Principal", "Action", "Resource", "Condition"}
    if unexpected_keys:
        problems.add(at, f"unexpected keys {sorted(unexpected_keys)} (NotAction/NotPrincipal/NotResource widen or obscure a statement)")
        return []
    actions = _as_list(statement.get("Action", []))
    if statement.get("Effect") != "Deny":
        if statement.get("Effect") == "Allow" and _is_everyone(statement.get("Principal")):
            problems.add(at, f"allows {_describe(actions)} on {target} to everyone (Principal *); resource policies here may only deny")
        else:
            problems.add(at, f"Effect {_describe(statement.get('Effect'))} for {_describe(statement.get('Principal'))}: resource policies here may only deny (grants belong in the roles)")
        return []
    if not _is_everyone(statement.get("Principal")):
        problems.add(at, f"a Deny for {_describe(statement.get('Principal'))} leaves everyone else to their IAM grants: deny Principal * with an aws:PrincipalArn condition")
        return []
    is_secret = resources.get(target, {}).get("Type") == "AWS::SecretsManager::Secret"
    allowed_resources = ["*", {"Ref": target}] if is_secret else ["*", {"Fn::GetAtt": [target, "Arn"]}]
    for resource in _as_list(statement.get("Resource", [])):
        if resource not in allowed_resources:
            problems.add(at, f"Resource {_describe(resource)}: a policy on {target} names \"*\" or {target} itself")
    exempt = _exempt_principals(at, statement.get("Condition"), resources, problems)
    if exempt is None:
        return []
    denials = []
    for action in actions:
        if not isinstance(action, str) or "*" in action or "?" in action:
            problems.add(at, f"denies {_describe(action)}, not one exact action: it may cover the actions CloudFormation and the administrators need")
            continue
        guarded = {a.lower(): a for a in GUARDED[target]}
        if action.lower() not in guarded:
            problems.add(at, f"denies {action} on {target}, which GUARDED in {Path(__file__).name} does not list (a deny on a management action can block CloudFormation and the administrators; see docs/security.md)")
            continue
        denials.append((guarded[action.lower()], exempt))
    return denials


def _check_resource_policies(
    translated: dict[str, Any], roles_of: dict[str, str], problems: Problems
) -> None:
    resources: dict[str, Any] = translated.get("Resources", {})
    _check_operator_parameter(translated, problems)
    policies = {pid: p for pid, p in resources.items() if p.get("Type") in POLICY_TYPES}
    for operator_given in (False, True):
        world = "with OperatorPrincipalArn given" if operator_given else "with OperatorPrincipalArn empty"
        # (target, action) -> the exempt set of each statement denying it
        denied: dict[tuple[str, str], list[set[str]]] = {}
        for policy_id, policy in sorted(policies.items()):
            _, document_property = POLICY_TYPES[policy["Type"]]
            document = _resolve_operator(policy.get("Properties", {}).get(document_property, {}), operator_given, policy_id, problems)
            if not operator_given and _mentions_operator(document):
                problems.add(policy_id, f"names {OPERATOR_PARAMETER} outside !If {OPERATOR_CONDITION} (empty, it makes an invalid or meaningless statement)")
                continue
            for target in _policy_targets(policy_id, policy, Problems()):
                for index, statement in enumerate(_as_list(document.get("Statement", []) if isinstance(document, dict) else [])):
                    at = f"{policy_id} statement {index + 1} ({world})"
                    for action, exempt in _statement_denials(at, statement, target, resources, problems):
                        denied.setdefault((target, action), []).append(exempt)
        for target, actions in GUARDED.items():
            for action, when in actions.items():
                callers = {
                    function
                    for function, grants in EXPECTED_GRANTS.items()
                    if (action, target) in grants or (action, f"{target}.Arn") in grants
                }
                expected = {roles_of[f] for f in callers if f in roles_of} | ({OPERATOR} if operator_given else set())
                statements = denied.get((target, action))
                if when == "operator" and not operator_given:
                    if statements:
                        problems.add(target, f"{action} is denied {world}: nobody could do it then (GUARDED: only with an operator)")
                    continue
                if not statements:
                    problems.add(target, f"{action} is not denied to other principals {world} (expected a Deny for Principal * except {sorted(expected) or 'nobody'})")
                    continue
                # A principal gets through only if no statement denies it.
                exempt = set.intersection(*statements)
                for role in sorted(expected - exempt):
                    problems.add(target, f"{action} is denied to {role} {world}, which needs it")
                for role in sorted(exempt - expected):
                    problems.add(target, f"{action} is not denied to {role} {world}, which does not call it")
    policy_of: dict[str, str] = {}
    for policy_id, policy in sorted(policies.items()):
        for target in _policy_targets(policy_id, policy, problems):
            if target in policy_of:
                problems.add(policy_id, f"a second resource policy on {target} (after {policy_of[target]}); one replaces the other")
            policy_of.setdefault(target, policy_id)
        if policy["Type"] == "AWS::SecretsManager::ResourcePolicy" and policy.get("Properties", {}).get("BlockPublicPolicy") is not True:
            problems.add(policy_id, "BlockPublicPolicy must be true")


def check(translated: dict[str, Any]) -> tuple[Problems, dict[str, set[tuple[str, str]]]]:
    resources: dict[str, Any] = translated.get("Resources", {})
    problems = Problems()
    functions = {rid: r for rid, r in resources.items() if r.get("Type") == "AWS::Lambda::Function"}
    for extra in sorted(set(functions) - set(EXPECTED_GRANTS)):
        problems.add(extra, "a function with no entry in EXPECTED_GRANTS / EXPECTED_INVOKERS; add one")
    for missing in sorted(set(EXPECTED_GRANTS) - set(functions)):
        problems.add(missing, "expected function is missing from the template")
    for logical_id, expected_type in EXPECTED_TYPES.items():
        actual_type = resources.get(logical_id, {}).get("Type")
        if actual_type != expected_type:
            problems.add(logical_id, f"expected a {expected_type}, found {actual_type}")
    for rid, resource in resources.items():
        if resource.get("Type") in FORBIDDEN_TYPES:
            problems.add(rid, f"{FORBIDDEN_TYPES[resource['Type']]} ({resource['Type']}) is not expected in this template")

    grants_by_function: dict[str, set[tuple[str, str]]] = {}
    roles_seen: dict[str, str] = {}
    for function_id in sorted(set(functions) & set(EXPECTED_GRANTS)):
        role_id = _role_of(function_id, functions[function_id], resources, problems)
        if role_id is None:
            continue
        if role_id in roles_seen:
            problems.add(function_id, f"shares role {role_id} with {roles_seen[role_id]}; each function needs its own")
            continue
        roles_seen[role_id] = function_id
        _check_trust(role_id, resources[role_id], problems)
        grants_by_function[function_id] = _check_grants(function_id, role_id, resources, problems)
    _check_invokers(functions, resources, problems)
    _check_queue_wiring(resources, problems)
    _check_resource_policies(translated, {f: r for r, f in roles_seen.items()}, problems)
    return problems, grants_by_function


# ------------------------------------------------------------------ self-test


def _function(template: dict[str, Any], function_id: str) -> dict[str, Any]:
    return template["Resources"][function_id]


def _role(template: dict[str, Any], function_id: str) -> dict[str, Any]:
    role_id = ref_name(_function(template, function_id)["Properties"]["Role"]).removesuffix(".Arn")
    return template["Resources"][role_id]


def _add_statement(function_id: str, statement: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(template: dict[str, Any]) -> None:
        _role(template, function_id)["Properties"]["Policies"][-1]["PolicyDocument"]["Statement"].append(statement)

    return mutate


def _token_statement(template: dict[str, Any], function_id: str) -> dict[str, Any]:
    for policy in _role(template, function_id)["Properties"]["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            if ref_name(statement.get("Resource")) == "TokenSecret":
                return statement
    raise LookupError(f"{function_id} has no statement on TokenSecret")


def _set_token_resource(function_id: str, resource: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(template: dict[str, Any]) -> None:
        _token_statement(template, function_id)["Resource"] = resource

    return mutate


def _add_token_action(function_id: str, action: str) -> Callable[[dict[str, Any]], None]:
    def mutate(template: dict[str, Any]) -> None:
        statement = _token_statement(template, function_id)
        statement["Action"] = _as_list(statement["Action"]) + [action]

    return mutate


def _drop_role(function_id: str, policies: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(template: dict[str, Any]) -> None:
        props = _function(template, function_id)["Properties"]
        del props["Role"]
        props["Policies"] = policies

    return mutate


def _managed_policy(template: dict[str, Any]) -> None:
    _role(template, "RefreshFunction")["Properties"]["ManagedPolicyArns"] = ["arn:aws:iam::aws:policy/AdministratorAccess"]


def _attached_policy(template: dict[str, Any]) -> None:
    role_id = ref_name(_function(template, "OAuthFunction")["Properties"]["Role"]).removesuffix(".Arn")
    template["Resources"]["ExtraPolicy"] = {
        "Type": "AWS::IAM::Policy",
        "Properties": {
            "PolicyName": "extra",
            "Roles": [{"Ref": role_id}],
            "PolicyDocument": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sqs:PurgeQueue", "Resource": {"Fn::GetAtt": ["SignupQueue", "Arn"]}}]},
        },
    }


def _shared_role(template: dict[str, Any]) -> None:
    _function(template, "RefreshFunction")["Properties"]["Role"] = copy.deepcopy(_function(template, "OAuthFunction")["Properties"]["Role"])


def _wide_route_permission(template: dict[str, Any]) -> None:
    for resource in template["Resources"].values():
        if resource.get("Type") == "AWS::Lambda::Permission" and ref_name(resource["Properties"]["FunctionName"]) == "SignupFunction":
            resource["Properties"]["SourceArn"] = {"Fn::Sub": "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${HttpApi}/*"}


def _public_url(template: dict[str, Any]) -> None:
    _function(template, "SignupFunction")["Properties"]["FunctionUrlConfig"] = {"AuthType": "NONE"}


def _queue_policy(template: dict[str, Any]) -> None:
    template["Resources"]["OpenQueue"] = {
        "Type": "AWS::SQS::QueuePolicy",
        "Properties": {
            "Queues": [{"Ref": "SignupQueue"}],
            "PolicyDocument": {"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "sqs:SendMessage", "Resource": "*"}]},
        },
    }


def _short_visibility(template: dict[str, Any]) -> None:
    template["Resources"][RETRY_QUEUE]["Properties"]["VisibilityTimeout"] = 60


def _policy_statements(template: dict[str, Any], policy_id: str) -> list[Any]:
    policy = template["Resources"][policy_id]
    _, document_property = POLICY_TYPES[policy["Type"]]
    return policy["Properties"][document_property]["Statement"]


def _add_policy_statement(policy_id: str, statement: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(template: dict[str, Any]) -> None:
        _policy_statements(template, policy_id).append(statement)

    return mutate


def _exemptions(statement: dict[str, Any]) -> list[Any]:
    return statement["Condition"]["ArnNotLike"]["aws:PrincipalArn"]


def _drop_exemption(policy_id: str, sid: str, role_id: str) -> Callable[[dict[str, Any]], None]:
    def mutate(template: dict[str, Any]) -> None:
        for statement in _policy_statements(template, policy_id):
            if isinstance(statement, dict) and statement.get("Sid") == sid:
                statement["Condition"]["ArnNotLike"]["aws:PrincipalArn"] = [
                    v for v in _exemptions(statement) if ref_name(v) != f"{role_id}.Arn"
                ]
                return
        raise LookupError(f"{policy_id} has no statement {sid}")

    return mutate


def _add_exemption(policy_id: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(template: dict[str, Any]) -> None:
        _exemptions(_policy_statements(template, policy_id)[0]).append(value)

    return mutate


def _set_action(policy_id: str, action: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(template: dict[str, Any]) -> None:
        _policy_statements(template, policy_id)[0]["Action"] = action

    return mutate


def _drop_resource(resource_id: str) -> Callable[[dict[str, Any]], None]:
    return lambda template: template["Resources"].pop(resource_id)


def _operator_write_deny_always(template: dict[str, Any]) -> None:
    statements = _policy_statements(template, "AppSecretPolicy")
    for index, statement in enumerate(statements):
        if isinstance(statement, dict) and "Fn::If" in statement:
            statements[index] = statement["Fn::If"][1]
            return
    raise LookupError("AppSecretPolicy has no conditional statement")


def _rewrite_denies_equivalently(template: dict[str, Any]) -> None:
    """Each deny-only policy in another spelling: one statement per action, Principal {AWS: *},
    StringNotLike for ArnNotLike, the !If around a whole Condition kept as it is."""
    for policy_id, policy in template["Resources"].items():
        if policy.get("Type") not in POLICY_TYPES:
            continue
        rewritten = []
        for statement in _policy_statements(template, policy_id):
            if not isinstance(statement, dict) or "Fn::If" in statement:
                rewritten.append(statement)
                continue
            for index, action in enumerate(_as_list(statement["Action"])):
                single = {**copy.deepcopy(statement), "Sid": f"{statement.get('Sid', 'S')}{index}", "Principal": {"AWS": "*"}, "Action": action}
                condition = single.get("Condition")
                if isinstance(condition, dict) and "ArnNotLike" in condition:
                    single["Condition"] = {"StringNotLike": condition["ArnNotLike"]}
                rewritten.append(single)
        _, document_property = POLICY_TYPES[policy["Type"]]
        policy["Properties"][document_property]["Statement"] = rewritten


def _stricter_duplicate_deny(template: dict[str, Any]) -> None:
    # A second deny of the same action with the same exemptions changes nothing: still deny-only.
    statements = _policy_statements(template, "SignupQueuePolicy")
    statements.append({**copy.deepcopy(statements[0]), "Sid": "AlsoSentBySignupAndSignupRetryOnly"})


MUTATIONS: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("oauth gets secretsmanager:DeleteSecret on the token secret", _add_token_action("OAuthFunction", "secretsmanager:DeleteSecret")),
    ("signup gets secretsmanager:* on the token secret", _add_token_action("SignupFunction", "secretsmanager:*")),
    ("refresh's token grant widened to Resource *", _set_token_resource("RefreshFunction", "*")),
    ("refresh's token grant widened to a literal ARN pattern", _set_token_resource("RefreshFunction", "arn:aws:secretsmanager:*:*:secret:*")),
    ("signup-retry's token grant widened with !Sub ${TokenSecret}*", _set_token_resource("SignupRetryFunction", {"Fn::Sub": "${TokenSecret}*"})),
    ("refresh may send to the queue", _add_statement("RefreshFunction", {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": {"Fn::GetAtt": ["SignupQueue", "Arn"]}})),
    ("signup may read the dead-letter queue", _add_statement("SignupFunction", {"Effect": "Allow", "Action": "sqs:ReceiveMessage", "Resource": {"Fn::GetAtt": ["SignupDeadLetterQueue", "Arn"]}})),
    ("oauth may write the app secret", _add_statement("OAuthFunction", {"Effect": "Allow", "Action": "secretsmanager:PutSecretValue", "Resource": {"Ref": "AppSecret"}})),
    ("signup may send to every queue", _add_statement("SignupFunction", {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "*"})),
    ("a NotAction statement", _add_statement("RefreshFunction", {"Effect": "Allow", "NotAction": "iam:*", "Resource": {"Ref": "AppSecret"}})),
    ("signup loses sqs:SendMessage", lambda t: _role(t, "SignupFunction")["Properties"]["Policies"].pop()),
    ("AdministratorAccess on refresh's role", _managed_policy),
    ("an AWS::IAM::Policy attached to oauth's role", _attached_policy),
    ("refresh shares oauth's role", _shared_role),
    ("signup-retry on a SAM-generated role (SAM adds AWSLambdaSQSQueueExecutionRole)", _drop_role("SignupRetryFunction", [{"Statement": [{"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": {"Ref": "AppSecret"}}]}])),
    ("refresh on a SAM-generated role with a SAM policy template", _drop_role("RefreshFunction", [{"AWSSecretsManagerGetSecretValuePolicy": {"SecretArn": {"Ref": "AppSecret"}}}])),
    ("signup invokable from every route of the API", _wide_route_permission),
    ("signup gets a public function URL", _public_url),
    ("a queue policy open to everyone", _queue_policy),
    ("visibility timeout below 6x the retry function's timeout", _short_visibility),
    ("the token secret's policy also allows everyone (Principal *) to read it", _add_policy_statement("TokenSecretPolicy", {"Effect": "Allow", "Principal": "*", "Action": "secretsmanager:GetSecretValue", "Resource": "*"})),
    ("the signup queue's policy allows another account's role to send", _add_policy_statement("SignupQueuePolicy", {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:role/product"}, "Action": "sqs:SendMessage", "Resource": {"Fn::GetAtt": ["SignupQueue", "Arn"]}})),
    ("the signup queue's policy denies SendMessage to the signup function (nothing could be queued)", _drop_exemption("SignupQueuePolicy", "SentBySignupAndSignupRetryOnly", "SignupRole")),
    ("the signup queue's policy no longer exempts signup-retry from ReceiveMessage (Lambda's poller)", _drop_exemption("SignupQueuePolicy", "ConsumedBySignupRetryOnly", "SignupRetryRole")),
    ("the token secret's policy exempts a literal role ARN", _add_exemption("TokenSecretPolicy", "arn:aws:iam::111122223333:role/someone")),
    ("the signup queue's policy exempts the refresh role from SendMessage", _add_exemption("SignupQueuePolicy", {"Fn::GetAtt": ["RefreshRole", "Arn"]})),
    ("the events function may read the signup dead letters", _add_statement("EventsFunction", {"Effect": "Allow", "Action": "sqs:ReceiveMessage", "Resource": {"Fn::GetAtt": ["SignupDeadLetterQueue", "Arn"]}})),
    ("the event queue's policy no longer exempts the events function from ReceiveMessage", _drop_exemption("EventsQueuePolicy", "ConsumedByEventsOnly", "EventsRole")),
    ("the events dead-letter queue's policy is removed", _drop_resource("EventsDeadLetterQueuePolicy")),
    ("the app secret's policy denies secretsmanager:* (CloudFormation locked out)", _set_action("AppSecretPolicy", "secretsmanager:*")),
    ("the token secret's policy denies DeleteSecret (the stack could not be deleted)", _set_action("TokenSecretPolicy", ["secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue", "secretsmanager:UpdateSecretVersionStage", "secretsmanager:DeleteSecret"])),
    ("the dead-letter queue's policy is removed", _drop_resource("DeadLetterQueuePolicy")),
    ("the token secret's policy is removed", _drop_resource("TokenSecretPolicy")),
    ("the app secret's operator-only write deny applies without an operator", _operator_write_deny_always),
]

# Copies that must still pass: the check accepts deny-only policies however they are spelled.
ACCEPTED_VARIANTS: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("deny-only policies, one statement per action, Principal {AWS: *}, StringNotLike", _rewrite_denies_equivalently),
    ("a second deny-only statement on the signup queue with the same exemptions", _stricter_duplicate_deny),
]


def self_test(template: dict[str, Any]) -> bool:
    ok = True
    for name, mutate in MUTATIONS:
        mutated = copy.deepcopy(template)
        try:
            mutate(mutated)
            problems, _ = check(translate(mutated))
        except Exception as error:  # a mutation the translator rejects outright is also caught
            problems = Problems([f"translation failed: {error}"])
        if problems:
            print(f"  caught   {name}: {problems[0]}")
        else:
            print(f"  MISSED   {name}")
            ok = False
    for name, mutate in ACCEPTED_VARIANTS:
        mutated = copy.deepcopy(template)
        mutate(mutated)
        problems, _ = check(translate(mutated))
        if problems:
            print(f"  REFUSED  {name}: {problems[0]}")
            ok = False
        else:
            print(f"  passed   {name}")
    return ok


# ------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("template", nargs="?", default=str(Path(__file__).resolve().parent.parent / "template.yaml"))
    parser.add_argument("--translated-out", help="write the translated CloudFormation template (JSON) here")
    parser.add_argument("--translate-only", action="store_true", help="only write --translated-out, check nothing")
    parser.add_argument("--self-test", action="store_true", help="also check that widened copies of the template fail")
    args = parser.parse_args()

    template = load_template(Path(args.template))
    translated = translate(template)
    if args.translated_out:
        Path(args.translated_out).write_text(json.dumps(translated, indent=1, sort_keys=True), encoding="utf-8")
    if args.translate_only:
        if not args.translated_out:
            parser.error("--translate-only needs --translated-out")
        return 0

    problems, grants = check(translated)
    if problems:
        print(f"IAM check FAILED for {args.template}:")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print(f"IAM check passed for {args.template}:")
    for function_id, function_grants in sorted(grants.items()):
        print(f"  {function_id}")
        for action, resource in sorted(function_grants, key=lambda g: (g[1], g[0])):
            print(f"    {action:42} {resource}")
        for principal, source in sorted(EXPECTED_INVOKERS[function_id]):
            print(f"    invoked by {principal} from {source}")

    if args.self_test:
        print("Self-test: each widened copy must fail the check, each equivalent one pass")
        if not self_test(template):
            print("Self-test FAILED: the check missed a widened policy or refused an equivalent one")
            return 1
        print("Self-test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
