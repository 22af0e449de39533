{{- define "audit-transfer.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "audit-transfer.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "audit-transfer.secretName" -}}
{{- default (include "audit-transfer.fullname" .) .Values.secret.existingSecret -}}
{{- end -}}

{{/* The variable that names the state/cursor file of sources that keep one, else "". */}}
{{- define "audit-transfer.stateVar" -}}
{{- if eq .Values.source.type "CASTAI" -}}CASTAI_STATE_FILE
{{- else if eq .Values.source.type "CATO" -}}CATO_STATE_FILE
{{- else if eq .Values.source.type "S3_CURSOR" -}}S3_CURSOR_FILE
{{- end -}}
{{- end -}}

{{- define "audit-transfer.isSql" -}}
{{- if has .Values.source.type (list "SINGLE_COLUMN_JSON" "DJANGO_AUDITLOG") -}}true{{- end -}}
{{- end -}}

{{- define "audit-transfer.validate" -}}
{{- if not (has .Values.source.type (list "SINGLE_COLUMN_JSON" "DJANGO_AUDITLOG" "CASTAI" "CATO" "CDP_ARCHIVE" "S3_CURSOR")) -}}
{{- fail (printf "source.type %q: expected SINGLE_COLUMN_JSON, DJANGO_AUDITLOG, CASTAI, CATO, CDP_ARCHIVE or S3_CURSOR" .Values.source.type) -}}
{{- end -}}
{{- if .Values.targets -}}
{{- include "audit-transfer.validateTargets" . -}}
{{- else -}}
{{- if hasKey .Values.env "TARGETS" -}}
{{- fail "env.TARGETS: list the targets in targets (at least one); the chart renders TARGETS and each target's variables from it" -}}
{{- end -}}
{{- include "audit-transfer.validateSink" (dict "where" "sink" "sink" .Values.sink "path" .Values.sink.file.path "secretPrefix" "") -}}
{{- end -}}
{{- if and (gt (int .Values.send.parallelism) 1) (not (include "audit-transfer.isSql" .)) -}}
{{- fail "send.parallelism > 1 needs a SQL source (pages claimed with SKIP LOCKED); CASTAI, CATO, S3_CURSOR and CDP_ARCHIVE runs must not overlap" -}}
{{- end -}}
{{- if and (ne .Values.send.concurrencyPolicy "Forbid") (not (include "audit-transfer.isSql" .)) -}}
{{- fail "send.concurrencyPolicy must be Forbid for CASTAI, CATO, S3_CURSOR and CDP_ARCHIVE: their runs must not overlap" -}}
{{- end -}}
{{- /* A variable the chart sets from its own values must not come twice through env. */ -}}
{{- $own := dict "ROUTING_TOPIC_FIELD" .Values.routing.topicField "ROUTING_KEY_FIELD" .Values.routing.keyField "ACCEPT_TOPICS" .Values.routing.acceptTopics "ACCEPT_ROUTING_KEYS" .Values.routing.acceptRoutingKeys -}}
{{- range $k, $v := $own -}}
{{- if and $v (hasKey $.Values.env $k) -}}
{{- fail (printf "env.%s duplicates routing values: set it in one place" $k) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Refuses a sink block the job cannot run with. Call with (dict "where" "sink" "sink" $block
     "path" $fileSinkPath "secretPrefix" ""): where names the block in the messages, secretPrefix
     goes before the names of its variables in the Secret. */}}
{{- define "audit-transfer.validateSink" -}}
{{- $w := .where -}}
{{- $s := .sink -}}
{{- if not (has $s.type (list "elasticsearch" "splunk" "otlp" "file" "stdout")) -}}
{{- fail (printf "%s.type %q: expected elasticsearch, splunk, otlp, file or stdout" $w $s.type) -}}
{{- end -}}
{{- if and (eq $s.type "splunk") (not (dig "splunk" "url" "" $s)) -}}
{{- fail (printf "%s.splunk.url is required with %s.type=splunk (and %sSPLUNK_HEC_TOKEN in the Secret)" $w $w .secretPrefix) -}}
{{- end -}}
{{- if and (eq $s.type "otlp") (not (dig "otlp" "endpoint" "" $s)) -}}
{{- fail (printf "%s.otlp.endpoint is required with %s.type=otlp" $w $w) -}}
{{- end -}}
{{- if and (eq $s.type "elasticsearch") (not (dig "elasticsearch" "host" "" $s)) -}}
{{- fail (printf "%s.elasticsearch.host is required with %s.type=elasticsearch" $w $w) -}}
{{- end -}}
{{- if and (eq $s.type "file") (not (contains "://" (toString .path))) (not (dig "file" "existingClaim" "" $s)) -}}
{{- fail (printf "%s.file.existingClaim is required with %s.type=file and a local %s.file.path (the root filesystem is read-only); a bucket path (s3://, gs://, az://) needs none" $w $w $w) -}}
{{- end -}}
{{- end -}}

{{/* The ConfigMap lines of one sink block: only the variables its type reads, each name after
     prefix ("" for the single sink, TARGET_<NAME>_ for a target). Keys a block leaves out take
     the defaults of values.yaml. Call with (dict "prefix" "" "sink" $block "path" $fileSinkPath). */}}
{{- define "audit-transfer.sinkEnv" -}}
{{- $p := .prefix -}}
{{- $s := .sink -}}
{{ $p }}SINK: {{ $s.type | quote }}
{{- if eq $s.type "elasticsearch" }}
{{ $p }}ELASTICSEARCH_HOST: {{ dig "elasticsearch" "host" "" $s | quote }}
{{ $p }}ELASTICSEARCH_APP_AUDIT_LOG_INDEX: {{ dig "elasticsearch" "index" "app_audit_log" $s | quote }}
{{- else if eq $s.type "splunk" }}
{{ $p }}SPLUNK_HEC_URL: {{ dig "splunk" "url" "" $s | quote }}
{{- with dig "splunk" "index" "" $s }}
{{ $p }}SPLUNK_INDEX: {{ . | quote }}
{{- end }}
{{ $p }}SPLUNK_SOURCETYPE: {{ dig "splunk" "sourcetype" "_json" $s | default "_json" | quote }}
{{ $p }}SPLUNK_HEC_ACK: {{ dig "splunk" "ack" true $s | quote }}
{{- else if eq $s.type "otlp" }}
{{ $p }}OTEL_EXPORTER_OTLP_ENDPOINT: {{ dig "otlp" "endpoint" "" $s | quote }}
{{ $p }}OTEL_EXPORTER_OTLP_PROTOCOL: {{ dig "otlp" "protocol" "http/protobuf" $s | default "http/protobuf" | quote }}
{{ $p }}OTEL_EXPORTER_OTLP_COMPRESSION: {{ dig "otlp" "compression" "gzip" $s | default "none" | quote }}
{{ $p }}OTEL_SERVICE_NAME: {{ dig "otlp" "serviceName" "audit-transfer" $s | default "audit-transfer" | quote }}
{{- else if eq $s.type "file" }}
{{ $p }}OUTPUT_PATH: {{ .path | quote }}
{{ $p }}OUTPUT_GZIP: {{ dig "file" "gzip" false $s | quote }}
{{ $p }}OUTPUT_LAYOUT: {{ dig "file" "layout" "pages" $s | default "pages" | quote }}
{{- end }}
{{- end -}}

{{/* Refuses a targets list the job cannot run with (see values.yaml "targets"). */}}
{{- define "audit-transfer.validateTargets" -}}
{{- $v := .Values -}}
{{- if not (kindIs "slice" $v.targets) -}}
{{- fail "targets: expected a list of entries {name, sink, acceptTopics, acceptRoutingKeys}, at least one; [] for the single sink block" -}}
{{- end -}}
{{- if not (has $v.source.type (list "SINGLE_COLUMN_JSON" "DJANGO_AUDITLOG" "CASTAI" "CATO" "S3_CURSOR")) -}}
{{- fail (printf "targets with source.type %s: several targets need SINGLE_COLUMN_JSON, DJANGO_AUDITLOG, CASTAI, CATO or S3_CURSOR; use the single sink block" $v.source.type) -}}
{{- end -}}
{{- range $k := list "acceptTopics" "acceptRoutingKeys" -}}
{{- if index $v.routing $k -}}
{{- fail (printf "routing.%s selects for the single sink block; with targets set targets[].%s" $k $k) -}}
{{- end -}}
{{- end -}}
{{- range $k := list "TARGETS" "SINK" "ACCEPT_TOPICS" "ACCEPT_ROUTING_KEYS" -}}
{{- if hasKey $v.env $k -}}
{{- fail (printf "env.%s with targets: the chart renders TARGETS from the list, and the job refuses SINK, ACCEPT_TOPICS and ACCEPT_ROUTING_KEYS next to it (each target has its own)" $k) -}}
{{- end -}}
{{- end -}}
{{- $seen := dict -}}
{{- $paths := dict -}}
{{- range $i, $t := $v.targets -}}
{{- $at := printf "targets[%d]" $i -}}
{{- if not (kindIs "map" $t) -}}
{{- fail (printf "%s: expected an entry {name, sink, acceptTopics, acceptRoutingKeys}" $at) -}}
{{- end -}}
{{- range $k, $_ := $t -}}
{{- if not (has $k (list "name" "sink" "acceptTopics" "acceptRoutingKeys")) -}}
{{- fail (printf "%s.%s: unknown key; expected name, sink, acceptTopics, acceptRoutingKeys" $at $k) -}}
{{- end -}}
{{- end -}}
{{- $name := toString (dig "name" "" $t) -}}
{{- if not (regexMatch "^[A-Za-z][A-Za-z0-9_]*$" $name) -}}
{{- fail (printf "%s.name %q: expected letters, digits and _, starting with a letter (its variables take the prefix TARGET_<NAME>_)" $at $name) -}}
{{- end -}}
{{- $key := upper $name -}}
{{- if hasKey $seen $key -}}
{{- fail (printf "%s.name %q: %s has that name already (names are compared regardless of case)" $at $name (get $seen $key)) -}}
{{- end -}}
{{- $_ := set $seen $key $at -}}
{{- if not (and (kindIs "map" $t.sink) (dig "type" "" $t.sink)) -}}
{{- fail (printf "%s.sink.type is required: a block of the same shape as sink:, with type elasticsearch, splunk, otlp, file or stdout" $at) -}}
{{- end -}}
{{- $path := include "audit-transfer.targetPath" $t -}}
{{- include "audit-transfer.validateSink" (dict "where" (printf "%s.sink" $at) "sink" $t.sink "path" $path "secretPrefix" (printf "TARGET_%s_" $key)) -}}
{{- if and (eq $t.sink.type "file") (not (contains "://" $path)) -}}
{{- if hasKey $paths $path -}}
{{- fail (printf "%s.sink.file.path %q: %s writes there already; each local file target needs a directory of its own" $at $path (get $paths $path)) -}}
{{- end -}}
{{- $_ := set $paths $path $at -}}
{{- end -}}
{{- range $k, $_ := include "audit-transfer.targetEnv" (dict "target" $t "path" $path) | fromYaml -}}
{{- if hasKey $v.env $k -}}
{{- fail (printf "env.%s duplicates the values of %s: set it in one place" $k $at) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The directory or bucket of a file target: its sink.file.path, else /data/<name>. */}}
{{- define "audit-transfer.targetPath" -}}
{{- dig "file" "path" "" .sink | default (printf "/data/%s" (lower (toString .name))) -}}
{{- end -}}

{{/* The ConfigMap lines of one target: its sink's variables and its selection, all with the
     prefix TARGET_<NAME>_. Call with (dict "target" $entry "path" (targetPath of $entry)). */}}
{{- define "audit-transfer.targetEnv" -}}
{{- $p := printf "TARGET_%s_" (upper (toString .target.name)) -}}
{{- include "audit-transfer.sinkEnv" (dict "prefix" $p "sink" .target.sink "path" .path) }}
{{- with .target.acceptTopics }}
{{ $p }}ACCEPT_TOPICS: {{ . | toString | quote }}
{{- end }}
{{- with .target.acceptRoutingKeys }}
{{ $p }}ACCEPT_ROUTING_KEYS: {{ . | toString | quote }}
{{- end }}
{{- end -}}

{{/* The pod template of both jobs; call with (dict "root" $ "args" list "component" name). */}}
{{- define "audit-transfer.pod" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $stateVar := include "audit-transfer.stateVar" $root -}}
metadata:
  labels:
    {{- include "audit-transfer.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  containers:
    - name: audit-transfer
      image: {{ printf "%s:%s" $v.image.repository ($v.image.tag | toString) | quote }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      args:
        {{- toYaml .args | nindent 8 }}
      envFrom:
        - configMapRef:
            name: {{ include "audit-transfer.fullname" $root }}
        - secretRef:
            name: {{ include "audit-transfer.secretName" $root }}
      resources:
        {{- toYaml $v.resources | nindent 8 }}
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- if $stateVar }}
        - name: state
          mountPath: /state
        {{- end }}
        {{- if and (not $v.targets) (eq $v.sink.type "file") (not (contains "://" $v.sink.file.path)) }}
        - name: output
          mountPath: {{ $v.sink.file.path }}
        {{- end }}
        {{- range $i, $t := $v.targets }}
        {{- $path := include "audit-transfer.targetPath" $t }}
        {{- if and (eq $t.sink.type "file") (not (contains "://" $path)) }}
        - name: output-{{ $i }}
          mountPath: {{ $path | quote }}
        {{- end }}
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 16Mi
    {{- if $stateVar }}
    - name: state
      persistentVolumeClaim:
        claimName: {{ default (printf "%s-state" (include "audit-transfer.fullname" $root)) $v.persistence.existingClaim }}
    {{- end }}
    {{- if and (not $v.targets) (eq $v.sink.type "file") (not (contains "://" $v.sink.file.path)) }}
    - name: output
      persistentVolumeClaim:
        claimName: {{ $v.sink.file.existingClaim }}
    {{- end }}
    {{- /* Each local file target's claim, at its own path. */}}
    {{- range $i, $t := $v.targets }}
    {{- if and (eq $t.sink.type "file") (not (contains "://" (include "audit-transfer.targetPath" $t))) }}
    - name: output-{{ $i }}
      persistentVolumeClaim:
        claimName: {{ $t.sink.file.existingClaim | quote }}
    {{- end }}
    {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
