{{/* The chart's name, or nameOverride. */}}
{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The names of what the chart creates: fullnameOverride, or the release's name
followed by the chart's (just the release's name when it contains it), cut to
the 63 characters a label value allows.
*/}}
{{- define "sluice.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "sluice.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* What selects the operator's pods (immutable in a Deployment). */}}
{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The labels of every object the chart creates. */}}
{{- define "sluice.labels" -}}
{{ include "sluice.selectorLabels" . }}
app.kubernetes.io/part-of: sluice
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The Secret holding the coordinators' token key (its key `key`). */}}
{{- define "sluice.tokenKeySecret" -}}
{{- .Values.tokenKey.existingSecret | default (printf "%s-token-key" (include "sluice.fullname" .)) -}}
{{- end -}}

{{- define "sluice.serviceAccountName" -}}
{{- default (include "sluice.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The operator's image, which it also gives the coordinator and worker pods. */}}
{{- define "sluice.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "sluice.leaseName" -}}
{{- printf "%s-operator" (include "sluice.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
What the operator does with the API, and nothing more: the ClusterRole
(rbac.scope=cluster) and each watched namespace's Role (rbac.scope=namespaces)
hold these rules. tests/chart.rs drops each verb in turn and shows what breaks.
*/}}
{{- define "sluice.operatorRules" -}}
# The controller lists and watches IngestSources. `get` is not called, but
# the coordinator Role the operator writes grants it, and RBAC lets the
# operator grant only what it holds itself.
- apiGroups: ["sluice.dev"]
  resources: ["ingestsources"]
  verbs: ["get", "list", "watch"]
# The operator server-side applies the status (patch); the coordinator Role
# grants get and patch on it (as above).
- apiGroups: ["sluice.dev"]
  resources: ["ingestsources/status"]
  verbs: ["get", "patch"]
# The children it keeps in shape: cached by watches (list, watch), read by
# name before the first apply to find an object of that name that is not
# its child (get), and server-side applied (patch; an apply that creates
# the object also needs create).
- apiGroups: [""]
  resources: ["serviceaccounts", "configmaps", "services"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Pods are only read, from a cache: why a coordinator or a worker is not
# ready (unschedulable, image not pulled, crash looping) goes into the
# IngestSource's conditions.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Secrets: never read (no get, list or watch), so the operator's token
# reads no Secret. It creates each token Secret (the token is derived from
# its key, not read back), patches one only after a test that it is the
# source's own (a JSON patch), and learns whether a credentials Secret
# exists from a dry-run create, which writes nothing.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "patch"]
# Events on IngestSources; a repeated one is patched (its series count).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{/* The namespaces the NetworkPolicy goes into. */}}
{{- define "sluice.networkPolicyNamespaces" -}}
{{- if .Values.networkPolicy.namespaces -}}
{{- toJson .Values.networkPolicy.namespaces -}}
{{- else if eq .Values.rbac.scope "namespaces" -}}
{{- toJson .Values.watchNamespaces -}}
{{- else -}}
{{- fail "networkPolicy.namespaces must name the namespaces of your IngestSources when rbac.scope is cluster" -}}
{{- end -}}
{{- end -}}

{{/* Values that are each valid but do not go together. */}}
{{- define "sluice.checkValues" -}}
{{- if and (eq .Values.rbac.scope "namespaces") (not .Values.watchNamespaces) -}}
{{- fail "watchNamespaces must name at least one namespace when rbac.scope is namespaces" -}}
{{- end -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) -}}
{{- fail "replicaCount above 1 needs leaderElection.enabled: true, or the replicas would all reconcile" -}}
{{- end -}}
{{- end -}}
