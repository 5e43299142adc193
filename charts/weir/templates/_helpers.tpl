{{/* Chart name. */}}
{{- define "weir.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the prefix of every object's name. */}}
{{- define "weir.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "weir.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "weir.labels" -}}
helm.sh/chart: {{ include "weir.chart" . }}
app.kubernetes.io/name: {{ include "weir.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: weir
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "collector"). */}}
{{- define "weir.selectorLabels" -}}
app.kubernetes.io/name: {{ include "weir.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "weir.componentLabels" -}}
{{ include "weir.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Image of one component: (dict "root" $ "image" .Values.collector.image). */}}
{{- define "weir.image" -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s/%s:%s" (trimSuffix "/" .root.Values.image.registry) .image.name $tag }}
{{- end }}

{{- define "weir.reducerName" -}}
{{- printf "%s-reducer" (include "weir.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "weir.reducerHeadlessName" -}}
{{- printf "%s-reducer-headless" (include "weir.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "weir.sharded" -}}
{{- if gt (int .Values.reducer.replicas) 1 }}true{{ end }}
{{- end }}

{{/* The reducer's gRPC address as the collectors dial it: with several reducers, the
headless Service, whose name resolves to every reducer, for the rendezvous hash. */}}
{{- define "weir.collectorReducerAddress" -}}
{{- if .Values.collector.reducerAddress }}
{{- .Values.collector.reducerAddress }}
{{- else if include "weir.sharded" . }}
{{- printf "%s.%s.svc.%s:%d" (include "weir.reducerHeadlessName" .) .Release.Namespace .Values.clusterDomain (int .Values.reducer.service.grpcPort) }}
{{- else }}
{{- printf "%s.%s.svc.%s:%d" (include "weir.reducerName" .) .Release.Namespace .Values.clusterDomain (int .Values.reducer.service.grpcPort) }}
{{- end }}
{{- end }}

{{- define "weir.watcherName" -}}
{{- printf "%s-k8s-watcher" (include "weir.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "weir.watcherServiceAccount" -}}
{{- if .Values.k8sWatcher.serviceAccount.create }}
{{- default (include "weir.watcherName" .) .Values.k8sWatcher.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.k8sWatcher.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The hardened container security context of the reducer and the watcher. */}}
{{- define "weir.restrictedSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* mTLS flags of a peer whose files (as `weirctl certs` names them) are name.pem and name-key.pem. */}}
{{- define "weir.mtlsArgs" -}}
- --tls-ca=/etc/weir/tls/ca.pem
- --tls-cert=/etc/weir/tls/{{ . }}.pem
- --tls-key=/etc/weir/tls/{{ . }}-key.pem
{{- end }}

{{/* Checks of values that the schema cannot express. */}}
{{- define "weir.validate" -}}
{{- if and .Values.mtls.enabled (not .Values.mtls.existingSecret) }}
{{- fail "mtls.enabled needs mtls.existingSecret: a Secret with ca.pem, reducer.pem, reducer-key.pem, k8s-watcher.pem and k8s-watcher-key.pem from weirctl certs (see the chart's README)" }}
{{- end }}
{{- if and .Values.mtls.enabled .Values.collector.enabled (not .Values.mtls.nodeSecret) }}
{{- fail "mtls.enabled needs mtls.nodeSecret: a Secret with ca.pem and node-<node name>.pem and node-<node name>-key.pem for every node, from weirctl certs --nodes (see the chart's README)" }}
{{- end }}
{{- if and .Values.reducer.otlp.tlsSecret .Values.reducer.otlp.insecure }}
{{- fail "reducer.otlp.tlsSecret and reducer.otlp.insecure exclude each other" }}
{{- end }}
{{- if and (include "weir.sharded" .) .Values.k8sWatcher.reducerAddress }}
{{- fail "k8sWatcher.reducerAddress cannot be set with reducer.replicas > 1: one watcher streams to each reducer" }}
{{- end }}
{{- end }}
