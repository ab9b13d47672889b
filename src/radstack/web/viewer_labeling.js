/*
 * radstack: a labeling task in OHIF (docs/viewer.md, "Labeling tasks"). Appended to the generated
 * app-config.js after viewer_ai.js.
 *
 * A task's viewer URL carries `customization=/task/<id>`: OHIF 3.13 fetches /viewer/tasks/<id>.jsonc
 * (app config `customizationUrlPrefixes`) before any mode loads and applies its `global` block: the
 * project's labels as `measurementLabels` (every new measurement asks for one of them), the task as
 * `radstack.labelingTask`, and how AI results are shown (`radstack.aiResults`, viewer_ai.js).
 *
 * With `measurementTrackingMode` `standard` (kept for every other page), the reader's first measurement
 * asks "Track measurements for this series?", and one on another series of the study asks whether to
 * add it to the report; an answer of "No" leaves the measurement out of the report that "Create SR"
 * stores. In a task every measurement is a label for the task, so these two questions are answered
 * "Yes" / "Add to existing report" without asking. Everything else (the label list, "Create SR") is
 * OHIF's own.
 */
(function (config) {
  'use strict';
  // RESPONSE of the measurement-tracking extension's prompts.
  const ADD_SERIES = 2;
  const SET_STUDY_AND_SERIES = 3;

  function taskOf(services) {
    const customizations = services && services.customizationService;
    const task = customizations && customizations.getCustomization('radstack.labelingTask');
    return task && task.id != null ? task : null;
  }

  /** Wraps an OHIF tracking prompt: inside a labeling task, answer `response` without asking. */
  const answerInTask = response => ({
    $apply: original =>
      typeof original !== 'function'
        ? original
        : function trackWithoutAskingInTask(context, machineContext, event) {
            if (!taskOf(context.servicesManager.services)) {
              return original(context, machineContext, event);
            }
            const { viewportId, StudyInstanceUID, SeriesInstanceUID } = (event && event.data) || event || {};
            return Promise.resolve({
              userResponse: response,
              StudyInstanceUID,
              SeriesInstanceUID,
              viewportId,
              isBackupSave: false,
            });
          },
  });

  /**
   * OHIF 3.13.2's `promptLabelAnnotation` (extensions/default/src/utils/promptLabelAnnotation.js) ends
   * with `measurementService.update(measurementId, {...value}, true)` where `value` is the chosen label,
   * a string: the measurement becomes `{0: 'F', 1: 'r', …}`, which no panel lists and "Create SR" does
   * not store (the box stays drawn, labelled). The wrapper puts the measurement back, with its label.
   */
  const keepTheLabelledMeasurement = {
    $apply: original =>
      typeof original !== 'function'
        ? original
        : function promptLabelAnnotationKeepingTheMeasurement(context, machineContext, event) {
            const { measurementService } = context.servicesManager.services;
            const uid = event && event.measurementId;
            const measurement = uid && measurementService.getMeasurement(uid);
            const before = measurement ? { ...measurement } : null;
            return Promise.resolve(original(context, machineContext, event)).then(result => {
              const after = measurementService.getMeasurement(uid);
              if (before && after && after.uid !== before.uid) {
                const label = Object.keys(after)
                  .filter(key => /^\d+$/.test(key))
                  .sort((a, b) => a - b)
                  .map(key => after[key])
                  .join('');
                measurementService.update(uid, { ...before, label }, true);
              }
              return result;
            });
          },
  };

  // `mode` phase, every mode: the measurement-tracking extension registers these prompts when a mode
  // that uses it is entered (see viewer_ai.js).
  const customizations = (config.customizationService = config.customizationService || {});
  const everyMode = ((customizations.mode = customizations.mode || {})['*'] = customizations.mode['*'] || {});
  everyMode['measurement.promptBeginTracking'] = answerInTask(SET_STUDY_AND_SERIES);
  everyMode['measurement.promptTrackNewSeries'] = answerInTask(ADD_SERIES);
  everyMode['measurement.promptLabelAnnotation'] = keepTheLabelledMeasurement;
})(window.config);
