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
{{- if not (has .Values.sink.type (list "elasticsearch" "splunk" "otlp" "file" "stdout")) -}}
{{- fail (printf "sink.type %q: expected elasticsearch, splunk, otlp, file or stdout" .Values.sink.type) -}}
{{- end -}}
{{- if and (eq .Values.sink.type "splunk") (not .Values.sink.splunk.url) -}}
{{- fail "sink.splunk.url is required with sink.type=splunk (and SPLUNK_HEC_TOKEN in the Secret)" -}}
{{- end -}}
{{- if and (eq .Values.sink.type "otlp") (not .Values.sink.otlp.endpoint) -}}
{{- fail "sink.otlp.endpoint is required with sink.type=otlp" -}}
{{- end -}}
{{- if and (eq .Values.sink.type "elasticsearch") (not .Values.sink.elasticsearch.host) -}}
{{- fail "sink.elasticsearch.host is required with sink.type=elasticsearch" -}}
{{- end -}}
{{- if and (eq .Values.sink.type "file") (not (contains "://" .Values.sink.file.path)) (not .Values.sink.file.existingClaim) -}}
{{- fail "sink.file.existingClaim is required with sink.type=file and a local sink.file.path (the root filesystem is read-only); a bucket path (s3://, gs://, az://) needs none" -}}
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
        {{- if and (eq $v.sink.type "file") (not (contains "://" $v.sink.file.path)) }}
        - name: output
          mountPath: {{ $v.sink.file.path }}
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
    {{- if and (eq $v.sink.type "file") (not (contains "://" $v.sink.file.path)) }}
    - name: output
      persistentVolumeClaim:
        claimName: {{ $v.sink.file.existingClaim }}
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
